//! The do-not-call list's SQL (SPEC §4), written once for both backends:
//! the statements are the same text on SQLite and PostgreSQL (`$N`
//! placeholders, `ON CONFLICT`), so each function is generic over the sqlx
//! database and [`super::Store`]'s methods pass their pool.

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::StoreError;
use crate::leads::dnc::DncPattern;

/// Adds patterns in one transaction; an existing pattern keeps its entry
/// (and date) and takes the new reason when one is given.
pub(crate) async fn add<DB>(
    pool: &Pool<DB>,
    entries: &[(DncPattern, Option<String>)],
    now_ms: i64,
) -> Result<(), StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    let mut tx = pool.begin().await?;
    for (p, reason) in entries {
        sqlx::query::<DB>(
            "INSERT INTO dnc (pattern, prefix, reason, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (pattern, prefix) DO UPDATE SET reason = COALESCE(EXCLUDED.reason, dnc.reason)",
        )
        .bind(p.digits())
        .bind(p.is_prefix())
        .bind(reason.as_deref())
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// One page in pattern order, after `after`: `(pattern, reason, created_ms)`.
pub(crate) async fn list<DB>(
    pool: &Pool<DB>,
    after: Option<&DncPattern>,
    limit: i64,
) -> Result<Vec<(DncPattern, Option<String>, i64)>, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> (String, bool, Option<String>, i64): FromRow<'r, DB::Row>,
{
    let (pattern, prefix) = after.map_or(("", false), |p| (p.digits(), p.is_prefix()));
    let rows: Vec<(String, bool, Option<String>, i64)> = sqlx::query_as::<DB, _>(
        "SELECT pattern, prefix, reason, created_ms FROM dnc \
         WHERE pattern > $1 OR (pattern = $1 AND prefix > $2) \
         ORDER BY pattern, prefix LIMIT $3",
    )
    .bind(pattern)
    .bind(prefix)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(d, p, r, c)| (DncPattern::from_stored(d, p), r, c))
        .collect())
}

/// One pattern's `(reason, created_ms)`, if it is on the list.
pub(crate) async fn get<DB>(
    pool: &Pool<DB>,
    p: &DncPattern,
) -> Result<Option<(Option<String>, i64)>, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'r> (Option<String>, i64): FromRow<'r, DB::Row>,
{
    Ok(sqlx::query_as::<DB, _>(
        "SELECT reason, created_ms FROM dnc WHERE pattern = $1 AND prefix = $2",
    )
    .bind(p.digits())
    .bind(p.is_prefix())
    .fetch_optional(pool)
    .await?)
}

/// Removes one pattern; whether it was there.
pub(crate) async fn delete<DB>(pool: &Pool<DB>, p: &DncPattern) -> Result<bool, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
{
    // RETURNING (SQLite 3.35+, PostgreSQL) says whether a row went, in the
    // same text on both backends.
    let gone: Option<(String,)> = sqlx::query_as::<DB, _>(
        "DELETE FROM dnc WHERE pattern = $1 AND prefix = $2 RETURNING pattern",
    )
    .bind(p.digits())
    .bind(p.is_prefix())
    .fetch_optional(pool)
    .await?;
    Ok(gone.is_some())
}

/// The pattern covering `e164`: the number itself before the longest
/// covering prefix. One lookup of the number and each of its prefixes by
/// primary key.
pub(crate) async fn matching<DB>(
    pool: &Pool<DB>,
    e164: &str,
) -> Result<Option<DncPattern>, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'r> (String, bool): FromRow<'r, DB::Row>,
{
    let candidates = DncPattern::candidates(e164);
    if candidates.is_empty() {
        return Ok(None);
    }
    let placeholders: Vec<String> = (1..=candidates.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT pattern, prefix FROM dnc WHERE pattern IN ({})",
        placeholders.join(", ")
    );
    let mut query = sqlx::query_as::<DB, (String, bool)>(&sql);
    for c in candidates {
        query = query.bind(c);
    }
    let rows = query.fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|(d, p)| DncPattern::from_stored(d, p))
        .filter(|p| p.covers(e164))
        .max_by_key(|p| (!p.is_prefix(), p.digits().len())))
}

/// Whether lead `lead_id` is marked "do not call" (`leads.do_not_call`);
/// false when there is no such lead.
pub(crate) async fn lead_flag<DB>(pool: &Pool<DB>, lead_id: i64) -> Result<bool, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
{
    let row: Option<(i64,)> =
        sqlx::query_as::<DB, (i64,)>("SELECT do_not_call FROM leads WHERE id = $1")
            .bind(lead_id)
            .fetch_optional(pool)
            .await?;
    Ok(row.is_some_and(|(f,)| f != 0))
}
