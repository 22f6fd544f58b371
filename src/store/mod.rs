//! The store: leads, custom fields, opportunities, calls, Smart Views and
//! registrar bindings in SQLite or PostgreSQL (DESIGN.md "Storage").
//!
//! [`Store`] is an enum over the two backends with inherent async methods,
//! chosen by URL in [`connect`]. Both backends run the same SQL text (`$N`
//! placeholders work in both), generated once by the `store_methods!` macro;
//! only opening, migrations and write-transaction start differ. All queries
//! are runtime queries, so building needs no database. Times are epoch
//! milliseconds in the database and [`chrono::DateTime<Utc>`] in the model.

pub mod agents;
pub mod audit;
mod bulk;
pub mod call_writer;
mod callback;
pub mod claims;
mod dnc;
pub mod lead_notes;
pub mod legs;
#[macro_use]
pub(crate) mod methods;
pub mod postgres;
pub mod registration_writer;
pub mod sqlite;
pub mod stats;
pub mod views;
pub mod voicemail;

use crate::leads::model::{
    CallEnd, CallRecord, CustomField, CustomFieldSet, Lead, NewCall, NewCustomField, NewSmartView,
    Opportunity, Registration, SmartView, ValidLead, ValidOpportunity, ValidPatch,
};

use crate::leads::dnc::{DncEntry, DncPattern};
pub use bulk::{LeadLoader, SQLITE_COMMIT_ROWS};
pub use postgres::PgStore;
pub use registration_writer::RegistrationBatch;
pub use sqlite::SqliteStore;
pub use views::{ViewError, MAX_QUERY_BYTES};

/// What kind of row an error is about, for messages and HTTP codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    /// A lead.
    Lead,
    /// A custom field.
    CustomField,
    /// A call record.
    Call,
    /// A Smart View.
    SmartView,
    /// A registrar binding.
    Registration,
    /// An agent created through the API.
    Agent,
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Entity::Lead => "lead",
            Entity::CustomField => "custom field",
            Entity::Call => "call",
            Entity::SmartView => "smart view",
            Entity::Registration => "registration",
            Entity::Agent => "agent",
        })
    }
}

/// Errors of store operations, with constraint violations mapped to typed
/// variants so the HTTP layer answers 404/409/400 without reading SQL text
/// (DESIGN.md "Errors": database constraint mapping in one place).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither `sqlite:` nor `postgres:`/`postgresql:`.
    #[error("unsupported database URL {0:?}: expected sqlite://PATH or postgres://…")]
    BadUrl(String),
    /// The SQLite file's directory could not be created.
    #[error("cannot create the database directory: {0}")]
    Io(#[from] std::io::Error),
    /// A migration failed to apply.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// No row with this id.
    #[error("{entity} {id} not found")]
    NotFound {
        /// What was looked for.
        entity: Entity,
        /// Its id or key.
        id: String,
    },
    /// A uniqueness constraint refused the write (e.g. a custom field name
    /// that exists already).
    #[error("{0} already exists")]
    Conflict(Entity),
    /// A CHECK, NOT NULL or foreign-key constraint refused the write.
    #[error("invalid {0}: a database constraint refused it")]
    Invalid(Entity),
    /// A stored value the model cannot read (a row written by something else).
    #[error("corrupt stored value in {0}")]
    Corrupt(&'static str),
    /// Any other database failure (connection lost, disk full, …).
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

impl StoreError {
    /// Maps a driver error for an operation on `entity`: unique violations
    /// become `Conflict`, other constraint violations `Invalid`, a missing
    /// row `NotFound`.
    pub(crate) fn from_sqlx(e: sqlx::Error, entity: Entity, id: impl ToString) -> StoreError {
        use sqlx::error::ErrorKind;
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound {
                entity,
                id: id.to_string(),
            },
            sqlx::Error::Database(db) => match db.kind() {
                ErrorKind::UniqueViolation => StoreError::Conflict(entity),
                ErrorKind::ForeignKeyViolation
                | ErrorKind::CheckViolation
                | ErrorKind::NotNullViolation => StoreError::Invalid(entity),
                _ => StoreError::Database(e),
            },
            _ => StoreError::Database(e),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Migrate(m) => StoreError::Migrate(*m),
            other => StoreError::Database(other),
        }
    }
}

/// What [`Store::insert_dial`] stored and found.
#[derive(Debug, Clone, PartialEq)]
pub struct DialInsert {
    /// The call's record (no trunk when `dnc` or `lead_do_not_call`).
    pub record: CallRecord,
    /// The do-not-call pattern covering the number, if any.
    pub dnc: Option<DncPattern>,
    /// Whether the lead is marked "do not call" (asked only when
    /// `ask_lead`; false for no such lead).
    pub lead_do_not_call: bool,
}

/// Which call records [`Store::list_calls`] returns (`GET /api/v1/calls`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallFilter {
    /// Only this dialer session's calls.
    pub session_id: Option<i64>,
    /// Only calls to this lead.
    pub lead_id: Option<i64>,
}

/// A position in a call list, oldest first: `(started_ms, id)` of the last
/// record of the previous page.
pub type CallCursor = (i64, i64);

/// Which database a [`Store`] talks to; the Smart View compiler emits SQL
/// per backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (one file, WAL).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// The store, over SQLite or PostgreSQL. Cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub enum Store {
    /// SQLite backend.
    Sqlite(SqliteStore),
    /// PostgreSQL backend.
    Postgres(PgStore),
}

/// Opens the database named by `url` and applies pending migrations:
/// `sqlite://PATH` (the file and its directory are created; WAL mode,
/// foreign keys on), `sqlite::memory:` for a private in-memory database, or
/// `postgres://…` / `postgresql://…` (SPEC §4 `[database] url`).
pub async fn connect(url: &str) -> Result<Store, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Store::Sqlite(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Store::Postgres(PgStore::open(url).await?))
    } else {
        Err(StoreError::BadUrl(url.to_string()))
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

impl Store {
    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self {
            Store::Sqlite(_) => Backend::Sqlite,
            Store::Postgres(_) => Backend::Postgres,
        }
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.pool().close().await,
        }
    }

    /// All defined custom fields, by name.
    pub async fn list_custom_fields(&self) -> Result<Vec<CustomField>, StoreError> {
        dispatch!(self, s => s.list_custom_fields().await)
    }

    /// The custom fields as a lookup set for validation.
    pub async fn custom_field_set(&self) -> Result<CustomFieldSet, StoreError> {
        Ok(CustomFieldSet::new(self.list_custom_fields().await?))
    }

    /// Defines a custom field; `Conflict` if the name exists (ignoring case).
    pub async fn define_custom_field(
        &self,
        field: &NewCustomField,
    ) -> Result<CustomField, StoreError> {
        dispatch!(self, s => s.define_custom_field(field).await)
    }

    /// Inserts one lead in one transaction and returns it as stored.
    pub async fn insert_lead(&self, lead: &ValidLead, now_ms: i64) -> Result<Lead, StoreError> {
        let ids = self
            .insert_leads(std::slice::from_ref(lead), now_ms)
            .await?;
        let id = ids.first().copied().ok_or(StoreError::Corrupt("leads"))?;
        self.get_lead(id).await
    }

    /// Inserts leads in one transaction (all or none) and returns their ids
    /// in input order.
    pub async fn insert_leads(
        &self,
        leads: &[ValidLead],
        now_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        dispatch!(self, s => s.insert_leads(leads, now_ms).await)
    }

    /// One lead with contacts, custom values and opportunities.
    pub async fn get_lead(&self, id: i64) -> Result<Lead, StoreError> {
        let mut leads = self.get_leads(&[id]).await?;
        leads.pop().ok_or(StoreError::NotFound {
            entity: Entity::Lead,
            id: id.to_string(),
        })
    }

    /// Leads by id, in the order of `ids`; ids with no lead are left out.
    pub async fn get_leads(&self, ids: &[i64]) -> Result<Vec<Lead>, StoreError> {
        dispatch!(self, s => s.get_leads(ids).await)
    }

    /// Applies a validated patch (`updated` becomes `now_ms`).
    pub async fn update_lead(
        &self,
        id: i64,
        patch: &ValidPatch,
        now_ms: i64,
    ) -> Result<Lead, StoreError> {
        dispatch!(self, s => s.update_lead(id, patch, now_ms).await)?;
        self.get_lead(id).await
    }

    /// Deletes a lead with its contacts, values and opportunities; its call
    /// records stay with `lead_id` null.
    pub async fn delete_lead(&self, id: i64) -> Result<(), StoreError> {
        dispatch!(self, s => s.delete_lead(id).await)
    }

    /// Leads by id ascending after `after_id` (keyset paging), at most `limit`.
    pub async fn list_leads(
        &self,
        after_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Lead>, StoreError> {
        let ids = dispatch!(self, s => s.list_lead_ids(after_id, limit).await)?;
        self.get_leads(&ids).await
    }

    /// Makes every committed write durable now. SQLite commits in WAL mode
    /// with `synchronous = NORMAL` (src/store/sqlite.rs) do not wait for the
    /// disk; a bulk load calls this once at its end so what it reported as
    /// imported survives a power loss (a checkpoint syncs the WAL and the
    /// database file). PostgreSQL commits are durable already.
    pub async fn sync(&self) -> Result<(), StoreError> {
        if let Store::Sqlite(s) = self {
            sqlx::query("PRAGMA wal_checkpoint(FULL)")
                .execute(s.pool())
                .await?;
        }
        Ok(())
    }

    /// Number of leads.
    pub async fn count_leads(&self) -> Result<i64, StoreError> {
        dispatch!(self, s => s.count_leads().await)
    }

    /// Adds an opportunity to a lead.
    pub async fn add_opportunity(
        &self,
        lead_id: i64,
        opp: &ValidOpportunity,
        now_ms: i64,
    ) -> Result<Opportunity, StoreError> {
        dispatch!(self, s => s.add_opportunity(lead_id, opp, now_ms).await)
    }

    /// Stores a call and, in the same transaction, raises
    /// `leads.last_call_ms` to `started_ms` if later (`called`,
    /// `latest_call_created`; SPEC §4 "logged calls count … like dialer calls").
    pub async fn insert_call(&self, call: &NewCall) -> Result<CallRecord, StoreError> {
        dispatch!(self, s => s.insert_call(call, None).await)
    }

    /// [`Store::insert_call`] for a dialer call placed under the R13 claim
    /// `claim` (a `lead_claims` row): the claim gets the record's id in the
    /// same transaction (what `dialer::claim::attach_call` did in its own).
    pub async fn insert_claimed_call(
        &self,
        call: &NewCall,
        claim: i64,
    ) -> Result<CallRecord, StoreError> {
        dispatch!(self, s => s.insert_call(call, Some(claim)).await)
    }

    /// [`Store::insert_call`] for a dial (under the R13 claim `claim`, if
    /// any), asking the do-not-call list (SPEC §4) and, when `ask_lead`,
    /// the lead's "do not call" mark in the same statement: a number or
    /// lead they forbid is stored without its trunk, and [`DialInsert`]
    /// says which forbade it. The list is read at this dial in the shared
    /// database, so an entry added on any instance holds on all of them;
    /// one statement instead of two reads and the insert (SPEC §6 call
    /// setup rate).
    pub async fn insert_dial(
        &self,
        call: &NewCall,
        claim: Option<i64>,
        ask_lead: bool,
    ) -> Result<DialInsert, StoreError> {
        dispatch!(self, s => s.insert_dial(call, claim, ask_lead).await)
    }

    /// Records how a stored call ended (answer time, end, outcome, status).
    pub async fn finish_call(&self, id: i64, end: &CallEnd) -> Result<CallRecord, StoreError> {
        dispatch!(self, s => s.finish_call(id, end).await)
    }

    /// Several [`Store::finish_call`]s in one transaction, all or none
    /// (`call_writer`'s batch).
    pub async fn finish_calls(&self, ends: &[(i64, CallEnd)]) -> Result<(), StoreError> {
        dispatch!(self, s => s.finish_calls(ends).await)
    }

    /// Replaces the agent's notes on a call (SPEC §1 step 5); the call
    /// record as it now is.
    pub async fn set_call_notes(&self, id: i64, notes: &str) -> Result<CallRecord, StoreError> {
        dispatch!(self, s => s.set_call_notes(id, notes).await)
    }

    /// One call record.
    pub async fn get_call(&self, id: i64) -> Result<CallRecord, StoreError> {
        dispatch!(self, s => s.get_call(id).await)
    }

    /// Stores an uploaded voicemail message's row (SPEC §4); its id.
    pub async fn insert_voicemail_drop(
        &self,
        file: &str,
        duration_ms: i64,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        dispatch!(self, s => voicemail::insert(s.pool(), file, duration_ms, now_ms).await)
    }

    /// One voicemail message, if it exists.
    pub async fn get_voicemail_drop(
        &self,
        id: i64,
    ) -> Result<Option<voicemail::VoicemailDrop>, StoreError> {
        dispatch!(self, s => voicemail::get(s.pool(), id).await)
    }

    /// The file name of call `id`'s recording, if it was recorded.
    pub async fn call_recording(&self, id: i64) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => voicemail::recording(s.pool(), id).await)
    }

    /// Call records matching `filter`, oldest first (`started`, then id),
    /// after `after` (keyset paging), at most `limit`.
    pub async fn list_calls(
        &self,
        filter: CallFilter,
        after: Option<CallCursor>,
        limit: u32,
    ) -> Result<Vec<CallRecord>, StoreError> {
        dispatch!(self, s => s.list_calls(filter, after, limit).await)
    }

    /// A lead's latest calls, newest first (the console's call bar).
    pub async fn recent_lead_calls(
        &self,
        lead_id: i64,
        limit: i64,
    ) -> Result<Vec<CallRecord>, StoreError> {
        dispatch!(self, s => s.recent_lead_calls(lead_id, limit).await)
    }

    /// Stores a Smart View's name and query text.
    pub async fn create_smart_view(
        &self,
        view: &NewSmartView,
        now_ms: i64,
    ) -> Result<SmartView, StoreError> {
        dispatch!(self, s => s.create_smart_view(view, now_ms).await)
    }

    /// One Smart View.
    pub async fn get_smart_view(&self, id: i64) -> Result<SmartView, StoreError> {
        dispatch!(self, s => s.get_smart_view(id).await)
    }

    /// All Smart Views by id.
    pub async fn list_smart_views(&self) -> Result<Vec<SmartView>, StoreError> {
        dispatch!(self, s => s.list_smart_views().await)
    }

    /// Adds or refreshes a binding (RFC 3261 §10.3 step 7), keyed by
    /// `(aor, contact)`.
    pub async fn upsert_registration(&self, reg: &Registration) -> Result<(), StoreError> {
        dispatch!(self, s => s.upsert_registration(reg).await)
    }

    /// Writes one batch of binding changes in one transaction with
    /// multi-row statements: upserts keyed by `(aor, contact)` (RFC 3261
    /// §10.3 step 7) and deletions of removed contacts; all or nothing.
    /// The batch writer's commit ([`registration_writer`]).
    pub async fn save_registrations(&self, batch: &RegistrationBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        dispatch!(self, s => s.save_registrations(batch).await)
    }

    /// Removes one binding (`Expires: 0` on a Contact); whether it existed.
    pub async fn delete_registration(&self, aor: &str, contact: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.delete_registration(aor, contact).await)
    }

    /// Removes every binding of an AOR (`Contact: *`, RFC 3261 §10.3 step 6);
    /// how many.
    pub async fn delete_registrations(&self, aor: &str) -> Result<u64, StoreError> {
        dispatch!(self, s => s.delete_registrations(aor).await)
    }

    /// Removes bindings that expired at or before `now_ms`; how many.
    pub async fn delete_expired_registrations(&self, now_ms: i64) -> Result<u64, StoreError> {
        dispatch!(self, s => s.delete_expired_registrations(now_ms).await)
    }

    /// Sets the note typed in call `call_id`'s notes box on lead `lead_id`
    /// (an empty body removes it).
    pub async fn set_call_lead_note(
        &self,
        lead_id: i64,
        call_id: i64,
        agent: Option<&str>,
        body: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => lead_notes::set_for_call(s.pool(), lead_id, call_id, agent, body, now_ms).await)
    }

    /// Adds a note to a lead outside a call; `NotFound` for no such lead.
    pub async fn add_lead_note(
        &self,
        lead_id: i64,
        agent: Option<&str>,
        body: &str,
        now_ms: i64,
    ) -> Result<lead_notes::LeadNoteRow, StoreError> {
        dispatch!(self, s => lead_notes::add(s.pool(), lead_id, agent, body, now_ms).await)
    }

    /// A lead's notes, newest first.
    pub async fn lead_notes(
        &self,
        lead_id: i64,
        limit: i64,
    ) -> Result<Vec<lead_notes::LeadNoteRow>, StoreError> {
        dispatch!(self, s => lead_notes::list(s.pool(), lead_id, limit).await)
    }

    /// A dialer session's call statistics at `now_ms`, with the last
    /// `hours` hours.
    pub async fn session_stats(
        &self,
        session_id: i64,
        now_ms: i64,
        hours: u32,
    ) -> Result<stats::SessionStats, StoreError> {
        dispatch!(self, s => stats::session_stats(s.pool(), session_id, now_ms, hours).await)
    }

    /// Stores an agent created through the API (HA1 values only).
    pub async fn insert_agent(&self, a: &agents::AgentRow) -> Result<(), StoreError> {
        dispatch!(self, s => agents::insert(s.pool(), a).await)
    }

    /// Replaces a stored agent's display name and secrets.
    pub async fn update_agent(&self, a: &agents::AgentRow) -> Result<(), StoreError> {
        dispatch!(self, s => agents::update(s.pool(), a).await)
    }

    /// Every agent created through the API.
    pub async fn list_agents(&self) -> Result<Vec<agents::AgentRow>, StoreError> {
        dispatch!(self, s => agents::list(s.pool()).await)
    }

    /// One agent created through the API.
    pub async fn get_agent(&self, username: &str) -> Result<Option<agents::AgentRow>, StoreError> {
        dispatch!(self, s => agents::get(s.pool(), username).await)
    }

    /// Deletes an agent created through the API; whether it existed.
    pub async fn delete_agent(&self, username: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => agents::delete(s.pool(), username).await)
    }

    /// Stores an agent token's SHA-256 (never the token).
    pub async fn insert_agent_token(
        &self,
        token_sha256: &str,
        agent: &str,
        via: &str,
        created_ms: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => agents::insert_token(s.pool(), token_sha256, agent, via, created_ms).await)
    }

    /// The agent whose token has this SHA-256.
    pub async fn agent_for_token(&self, token_sha256: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => agents::token_agent(s.pool(), token_sha256).await)
    }

    /// Revokes every token of an agent; how many.
    pub async fn revoke_agent_tokens(&self, agent: &str) -> Result<u64, StoreError> {
        dispatch!(self, s => agents::delete_tokens(s.pool(), agent).await)
    }

    /// Adds patterns to the do-not-call list (SPEC §4); existing ones keep
    /// their entry, with the new reason when one is given.
    pub async fn add_dnc(
        &self,
        entries: &[(DncPattern, Option<String>)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => dnc::add(s.write_pool(), entries, now_ms).await)
    }

    /// One page of the do-not-call list in pattern order, after `after`.
    pub async fn list_dnc(
        &self,
        after: Option<&DncPattern>,
        limit: i64,
    ) -> Result<Vec<DncEntry>, StoreError> {
        let rows = dispatch!(self, s => dnc::list(s.pool(), after, limit).await)?;
        Ok(rows
            .into_iter()
            .map(|(p, reason, created_ms)| DncEntry {
                number: p.to_string(),
                reason,
                created: crate::leads::model::ms_to_time(created_ms),
            })
            .collect())
    }

    /// One do-not-call entry, if the pattern is on the list.
    pub async fn get_dnc(&self, p: &DncPattern) -> Result<Option<DncEntry>, StoreError> {
        let row = dispatch!(self, s => dnc::get(s.pool(), p).await)?;
        Ok(row.map(|(reason, created_ms)| DncEntry {
            number: p.to_string(),
            reason,
            created: crate::leads::model::ms_to_time(created_ms),
        }))
    }

    /// Removes a pattern from the do-not-call list; whether it was there.
    pub async fn delete_dnc(&self, p: &DncPattern) -> Result<bool, StoreError> {
        dispatch!(self, s => dnc::delete(s.write_pool(), p).await)
    }

    /// Whether the lead is marked "do not call" (false for a lead that does
    /// not exist). Asked before every dial for a lead, like the list.
    pub async fn lead_do_not_call(&self, lead_id: i64) -> Result<bool, StoreError> {
        dispatch!(self, s => dnc::lead_flag(s.pool(), lead_id).await)
    }

    /// The do-not-call pattern covering an E.164 number, if any (the number
    /// itself before the longest covering prefix). Asked
    /// before every dial, so a number added on any instance is never dialed
    /// by another (R13's shared database).
    pub async fn dnc_match(&self, e164: &str) -> Result<Option<DncPattern>, StoreError> {
        dispatch!(self, s => dnc::matching(s.pool(), e164).await)
    }

    /// [`Store::dnc_match`] and [`Store::lead_do_not_call`] (false
    /// without a lead) in one statement: a manual call asks both before
    /// it takes any resource (SPEC §4).
    pub async fn dnc_check(
        &self,
        e164: &str,
        lead_id: Option<i64>,
    ) -> Result<(Option<DncPattern>, bool), StoreError> {
        dispatch!(self, s => s.dnc_check(e164, lead_id).await)
    }

    /// Saves a batch of the leg journal in one transaction (see
    /// [`legs::save`]); called by the journal writer only.
    pub async fn save_legs(
        &self,
        upserts: &[legs::LegRow],
        removals: &[(String, String)],
    ) -> Result<(), StoreError> {
        dispatch!(self, s => legs::save(s.write_pool(), upserts, removals).await)
    }

    /// Every journaled leg (read at start-up, before anything dials).
    pub async fn load_legs(&self) -> Result<Vec<legs::LegRow>, StoreError> {
        dispatch!(self, s => legs::load(s.pool()).await)
    }

    /// Settles the calls of legs lost in a crash and clears their journal
    /// rows (see [`legs::settle`]): `(record id, outcome, answered_ms)`.
    pub async fn settle_lost_legs(
        &self,
        calls: &[(i64, &str, Option<i64>)],
        call_ids: &[String],
        now_ms: i64,
    ) -> Result<Vec<legs::Settled>, StoreError> {
        dispatch!(self, s => legs::settle(s.write_pool(), calls, call_ids, now_ms).await)
    }

    /// The lead one of whose phones is `e164` (a lead calling back, SPEC
    /// §1); among several, the one called last.
    pub async fn lead_by_phone(&self, e164: &str) -> Result<Option<i64>, StoreError> {
        dispatch!(self, s => callback::lead_by_phone(s.pool(), e164).await)
    }

    /// The agent (and session) of the latest agent call to `lead_id`.
    pub async fn last_agent_for_lead(
        &self,
        lead_id: i64,
    ) -> Result<Option<(String, Option<i64>)>, StoreError> {
        dispatch!(self, s => callback::last_agent(s.pool(), lead_id).await)
    }

    /// Every stored binding, for the registrar to load at start.
    pub async fn load_registrations(&self) -> Result<Vec<Registration>, StoreError> {
        dispatch!(self, s => s.load_registrations().await)
    }
}

/// A bare PostgreSQL pool (no migrations) for administrative statements
/// such as creating a test's schema.
pub async fn connect_admin_pg(url: &str) -> Result<sqlx::PgPool, StoreError> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?)
}
