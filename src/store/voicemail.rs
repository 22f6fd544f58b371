//! The voicemail drops' SQL (SPEC §4 `POST /api/v1/voicemail-drops`): the
//! audio lives in a file under the data dir, the table names it. The
//! statements are the same text on SQLite and PostgreSQL, so each function
//! is generic over the sqlx database (as `store/dnc.rs`).

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::StoreError;

/// An uploaded voicemail message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct VoicemailDrop {
    /// Its id (a session's `voicemail_drop_id`).
    pub id: i64,
    /// The file under `<data_dir>/voicemail/`.
    #[serde(skip)]
    pub file: String,
    /// Length of the message, ms.
    pub duration_ms: i64,
}

/// Stores a message's row; its id.
pub(crate) async fn insert<DB>(
    pool: &Pool<DB>,
    file: &str,
    duration_ms: i64,
    now_ms: i64,
) -> Result<i64, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
{
    let (id,) = sqlx::query_as::<DB, (i64,)>(
        "INSERT INTO voicemail_drops (file, duration_ms, created_ms) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(file)
    .bind(duration_ms)
    .bind(now_ms)
    .fetch_one(pool)
    .await?;
    Ok(id)
}

/// One message, if it exists.
pub(crate) async fn get<DB>(pool: &Pool<DB>, id: i64) -> Result<Option<VoicemailDrop>, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, String, i64): FromRow<'r, DB::Row>,
{
    let row = sqlx::query_as::<DB, (i64, String, i64)>(
        "SELECT id, file, duration_ms FROM voicemail_drops WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(id, file, duration_ms)| VoicemailDrop {
        id,
        file,
        duration_ms,
    }))
}

/// The recording file of call `id`, if it was recorded.
pub(crate) async fn recording<DB>(pool: &Pool<DB>, id: i64) -> Result<Option<String>, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> (Option<String>,): FromRow<'r, DB::Row>,
{
    let row = sqlx::query_as::<DB, (Option<String>,)>("SELECT recording FROM calls WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.and_then(|(f,)| f))
}
