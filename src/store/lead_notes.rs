//! Notes on a lead (SPEC §1 step 5; help page: the call note box): what an
//! agent types in a call's notes box is kept on the lead as one note per
//! call, replaced as the agent types, beside notes written without a call.
//! Written once for both backends (the same SQL text), generic over the
//! sqlx database like `store/agents.rs`.

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::{Entity, StoreError};

/// A stored note.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct LeadNoteRow {
    /// Database id.
    pub id: i64,
    /// The lead it is about.
    pub lead_id: i64,
    /// The call whose notes box it was typed in, if any.
    pub call_id: Option<i64>,
    /// Who wrote it (`null` for the admin).
    pub agent: Option<String>,
    /// The text.
    pub body: String,
    /// First saved, epoch ms.
    pub created_ms: i64,
    /// Last changed, epoch ms.
    pub updated_ms: i64,
}

const COLUMNS: &str = "id, lead_id, call_id, agent, body, created_ms, updated_ms";

/// Sets the note of call `call_id` on lead `lead_id` to `body`: created on
/// the first save, replaced after; an empty (all-blank) body removes it.
pub(crate) async fn set_for_call<DB>(
    pool: &Pool<DB>,
    lead_id: i64,
    call_id: i64,
    agent: Option<&str>,
    body: &str,
    now_ms: i64,
) -> Result<(), StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    if body.trim().is_empty() {
        sqlx::query::<DB>("DELETE FROM lead_notes WHERE call_id = $1")
            .bind(call_id)
            .execute(pool)
            .await?;
        return Ok(());
    }
    sqlx::query::<DB>(
        "INSERT INTO lead_notes (lead_id, call_id, agent, body, created_ms, updated_ms) \
         VALUES ($1, $2, $3, $4, $5, $5) \
         ON CONFLICT (call_id) DO UPDATE SET body = excluded.body, updated_ms = excluded.updated_ms",
    )
    .bind(lead_id)
    .bind(call_id)
    .bind(agent)
    .bind(body)
    .bind(now_ms)
    .execute(pool)
    .await
    .map_err(|e| StoreError::from_sqlx(e, Entity::Lead, lead_id))?;
    Ok(())
}

/// Adds a note written outside a call's notes box; `NotFound` for no such
/// lead.
pub(crate) async fn add<DB>(
    pool: &Pool<DB>,
    lead_id: i64,
    agent: Option<&str>,
    body: &str,
    now_ms: i64,
) -> Result<LeadNoteRow, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> LeadNoteRow: FromRow<'r, DB::Row>,
{
    let sql = format!(
        "INSERT INTO lead_notes (lead_id, agent, body, created_ms, updated_ms) \
         SELECT id, $2, $3, $4, $4 FROM leads WHERE id = $1 RETURNING {COLUMNS}"
    );
    sqlx::query_as::<DB, LeadNoteRow>(&sql)
        .bind(lead_id)
        .bind(agent)
        .bind(body)
        .bind(now_ms)
        .fetch_optional(pool)
        .await?
        .ok_or(StoreError::NotFound {
            entity: Entity::Lead,
            id: lead_id.to_string(),
        })
}

/// A lead's notes, newest first, at most `limit`.
pub(crate) async fn list<DB>(
    pool: &Pool<DB>,
    lead_id: i64,
    limit: i64,
) -> Result<Vec<LeadNoteRow>, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> LeadNoteRow: FromRow<'r, DB::Row>,
{
    Ok(sqlx::query_as::<DB, LeadNoteRow>(&format!(
        "SELECT {COLUMNS} FROM lead_notes WHERE lead_id = $1 \
         ORDER BY created_ms DESC, id DESC LIMIT $2"
    ))
    .bind(lead_id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
