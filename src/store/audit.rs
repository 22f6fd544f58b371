//! The dial audit (SPEC §4 compliance): every dial that was held, restricted
//! or refused before it reached the wire, with its reason, so a team can show
//! what its dialer did not do and why (`GET /api/v1/audit`).
//!
//! Entries leave the signalling path through an [`AuditLog`]: the call
//! engine, the sessions and the HTTP handlers hand them to a channel, and
//! one writer task commits whatever is pending in one transaction
//! (DESIGN.md "Writes leave the signalling path in batches"). Nothing is
//! dropped: a full channel makes the sender wait (backpressure) and a
//! failed commit is retried. The SQL is the same text on both backends,
//! generic over the sqlx database like `store/dnc.rs`.

use std::time::Duration;

use serde::Serialize;
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};
use tokio::sync::mpsc;

use super::{Store, StoreError};
use crate::leads::model::rfc3339;

/// What happened to the dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// Held in a session's queue until it may be called (calling hours).
    Held,
    /// Ended `restricted` without reaching the wire (the call record says so).
    Restricted,
    /// A manual call refused before anything rang.
    Refused,
    /// A manual call placed by the admin despite the rule (override).
    Overridden,
}

/// Why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditReason {
    /// Outside the lead's calling hours (SPEC §4).
    CallingHours,
    /// A holiday in the lead's zone (`[dialer] holidays`).
    Holiday,
    /// The number is on the do-not-call list (SPEC §4).
    DoNotCall,
    /// The lead is marked "do not call".
    LeadDoNotCall,
    /// Not a number the trunk may dial (R11: invalid, not allowed).
    NotDialable,
}

impl AuditAction {
    /// The stored and query spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Held => "held",
            AuditAction::Restricted => "restricted",
            AuditAction::Refused => "refused",
            AuditAction::Overridden => "overridden",
        }
    }

    fn parse(s: &str) -> Option<AuditAction> {
        [
            AuditAction::Held,
            AuditAction::Restricted,
            AuditAction::Refused,
            AuditAction::Overridden,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

impl AuditReason {
    /// Every reason, for the API's error message.
    pub const ALL: [AuditReason; 5] = [
        AuditReason::CallingHours,
        AuditReason::Holiday,
        AuditReason::DoNotCall,
        AuditReason::LeadDoNotCall,
        AuditReason::NotDialable,
    ];

    /// The stored and query spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditReason::CallingHours => "calling_hours",
            AuditReason::Holiday => "holiday",
            AuditReason::DoNotCall => "do_not_call",
            AuditReason::LeadDoNotCall => "lead_do_not_call",
            AuditReason::NotDialable => "not_dialable",
        }
    }

    /// Reads a reason as the API and the database write it.
    pub fn parse(s: &str) -> Option<AuditReason> {
        AuditReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// One audited dial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Its id (0 until stored).
    pub id: i64,
    /// When, epoch ms (`at`, RFC 3339, in the API).
    #[serde(rename = "at", serialize_with = "rfc3339::serialize_ms")]
    #[schema(value_type = chrono::DateTime<chrono::Utc>)]
    pub at_ms: i64,
    /// Held, restricted, refused or overridden.
    pub action: AuditAction,
    /// Why.
    pub reason: AuditReason,
    /// The dialer session, if the dial was a session's.
    pub session_id: Option<i64>,
    /// The lead, if known.
    pub lead_id: Option<i64>,
    /// The agent it was for.
    pub agent: Option<String>,
    /// The number (E.164 when it is one).
    pub number: Option<String>,
    /// Details for a person: the opening time, the covering pattern, …
    pub detail: String,
}

/// Which entries [`Store::list_audit`] returns (`GET /api/v1/audit`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this session's.
    pub session_id: Option<i64>,
    /// Only this lead's.
    pub lead_id: Option<i64>,
    /// Only this reason.
    pub reason: Option<AuditReason>,
    /// Only at or after this time, epoch ms.
    pub since_ms: Option<i64>,
}

/// Inserts entries in one transaction.
pub(crate) async fn insert<DB>(pool: &Pool<DB>, entries: &[AuditEntry]) -> Result<(), StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
{
    let mut tx = pool.begin().await?;
    for e in entries {
        sqlx::query::<DB>(
            "INSERT INTO dial_audit (at_ms, action, reason, session_id, lead_id, agent, number, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(e.at_ms)
        .bind(e.action.as_str())
        .bind(e.reason.as_str())
        .bind(e.session_id)
        .bind(e.lead_id)
        .bind(e.agent.as_deref())
        .bind(e.number.as_deref())
        .bind(e.detail.as_str())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

type Row = (
    i64,
    i64,
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    String,
);

/// One page, oldest first (by id), after the id `after`.
pub(crate) async fn list<DB>(
    pool: &Pool<DB>,
    filter: AuditFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditEntry>, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'r> Row: FromRow<'r, DB::Row>,
{
    let rows: Vec<Row> = sqlx::query_as::<DB, Row>(
        "SELECT id, at_ms, action, reason, session_id, lead_id, agent, number, detail \
         FROM dial_audit \
         WHERE id > $1 AND ($2 IS NULL OR session_id = $2) AND ($3 IS NULL OR lead_id = $3) \
         AND ($4 IS NULL OR reason = $4) AND ($5 IS NULL OR at_ms >= $5) \
         ORDER BY id LIMIT $6",
    )
    .bind(after)
    .bind(filter.session_id)
    .bind(filter.lead_id)
    .bind(filter.reason.map(AuditReason::as_str))
    .bind(filter.since_ms)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(
            |(id, at_ms, action, reason, session_id, lead_id, agent, number, detail)| {
                Ok(AuditEntry {
                    id,
                    at_ms,
                    action: AuditAction::parse(&action)
                        .ok_or(StoreError::Corrupt("dial_audit.action"))?,
                    reason: AuditReason::parse(&reason)
                        .ok_or(StoreError::Corrupt("dial_audit.reason"))?,
                    session_id,
                    lead_id,
                    agent,
                    number,
                    detail,
                })
            },
        )
        .collect()
}

/// Entries the channel holds before [`AuditLog::record`] waits.
const CHANNEL: usize = 4_096;
/// Most entries committed in one transaction.
const MAX_BATCH: usize = 1_024;
/// Retry delays after a failed commit.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Where audit entries go: a cheap handle to the writer task.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: Option<mpsc::Sender<Item>>,
}

/// What the writer's channel carries: entries, and flush requests
/// answered once everything sent before them is committed.
#[derive(Debug)]
enum Item {
    Entry(AuditEntry),
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl AuditLog {
    /// Starts the writer task on `store` (within a tokio runtime). It ends
    /// once every handle is dropped and what was sent is committed.
    pub fn start(store: Store) -> AuditLog {
        let (tx, rx) = mpsc::channel(CHANNEL);
        tokio::spawn(run_writer(store, rx));
        AuditLog { tx: Some(tx) }
    }

    /// A log that keeps nothing (unit tests of other parts).
    pub fn disabled() -> AuditLog {
        AuditLog { tx: None }
    }

    /// Hands an entry to the writer: at once, unless the writer is that far
    /// behind (then this waits: backpressure, never a drop).
    pub async fn record(&self, entry: AuditEntry) {
        let Some(tx) = &self.tx else {
            return;
        };
        if tx.send(Item::Entry(entry)).await.is_err() {
            tracing::warn!("the audit writer has stopped: entry not kept");
        }
    }

    /// Returns once every entry recorded before the call is committed (a
    /// graceful stop calls it so that no audit entry is lost, SPEC §5).
    pub async fn flush(&self) {
        let Some(tx) = &self.tx else {
            return;
        };
        let (done, wait) = tokio::sync::oneshot::channel();
        if tx.send(Item::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Commits what the channel holds, a batch per transaction, until every
/// sender is gone.
#[allow(clippy::disallowed_methods)] // a driver: the retry delay's timer.
async fn run_writer(store: Store, mut rx: mpsc::Receiver<Item>) {
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        match first {
            Item::Entry(e) => batch.push(e),
            Item::Flush(done) => flushes.push(done),
        }
        // A flush ends the batch: what came before it is what it waits for.
        while batch.len() < MAX_BATCH && flushes.is_empty() {
            match rx.try_recv() {
                Ok(Item::Entry(e)) => batch.push(e),
                Ok(Item::Flush(done)) => flushes.push(done),
                Err(_) => break,
            }
        }
        let mut delay = RETRY_MIN;
        while !batch.is_empty() {
            match store.insert_audit(&batch).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, entries = batch.len(), "audit entries not stored yet: retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

impl Store {
    /// Stores audit entries in one transaction (the [`AuditLog`] writer).
    pub async fn insert_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => insert(s.write_pool(), entries).await,
            Store::Postgres(s) => insert(s.pool(), entries).await,
        }
    }

    /// A page of audit entries matching `filter`, oldest first, after the
    /// entry `after` (0: from the start).
    pub async fn list_audit(
        &self,
        filter: AuditFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        match self {
            Store::Sqlite(s) => list(s.pool(), filter, after, limit).await,
            Store::Postgres(s) => list(s.pool(), filter, after, limit).await,
        }
    }
}
