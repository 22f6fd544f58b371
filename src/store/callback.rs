//! The SQL a lead calling back needs (SPEC §1 "Leads calling back"): which
//! lead a number belongs to and which agent called that lead last. The
//! statements are the same text on SQLite and PostgreSQL, so each function
//! is generic over the sqlx database (as `store/dnc.rs`).

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::StoreError;

/// The lead whose phones include `e164` (stored E.164, SPEC §4 lead
/// `phones`); among several, the one called last, then the newest.
pub(crate) async fn lead_by_phone<DB>(
    pool: &Pool<DB>,
    e164: &str,
) -> Result<Option<i64>, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
{
    let row: Option<(i64,)> = sqlx::query_as::<DB, (i64,)>(
        "SELECT c.lead_id FROM phones p JOIN contacts c ON c.id = p.contact_id \
         WHERE p.number = $1 \
         ORDER BY (SELECT MAX(k.started_ms) FROM calls k WHERE k.lead_id = c.lead_id) DESC NULLS LAST, \
                  c.lead_id DESC \
         LIMIT 1",
    )
    .bind(e164)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(id,)| id))
}

/// The agent and session of the latest call to `lead_id` made by an agent
/// (dialer, manual or an earlier callback).
pub(crate) async fn last_agent<DB>(
    pool: &Pool<DB>,
    lead_id: i64,
) -> Result<Option<(String, Option<i64>)>, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> (String, Option<i64>): FromRow<'r, DB::Row>,
{
    Ok(sqlx::query_as::<DB, (String, Option<i64>)>(
        "SELECT agent, session_id FROM calls WHERE lead_id = $1 AND agent IS NOT NULL \
         ORDER BY started_ms DESC, id DESC LIMIT 1",
    )
    .bind(lead_id)
    .fetch_optional(pool)
    .await?)
}
