//! Agents created through the API (SPEC §4): their digest HA1 values, never
//! their passwords. Written once for both backends (the same SQL text),
//! generic over the sqlx database like `store/dnc.rs`.

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::{Entity, StoreError};

/// A stored agent.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct AgentRow {
    /// SIP username.
    pub username: String,
    /// Shown to people.
    pub display_name: Option<String>,
    /// The digest realm the HA1 values were computed for.
    pub realm: String,
    /// MD5 HA1, lowercase hex.
    pub ha1_md5: String,
    /// SHA-256 HA1, lowercase hex.
    pub ha1_sha256: String,
    /// Created, epoch ms.
    pub created_ms: i64,
    /// Last changed, epoch ms.
    pub updated_ms: i64,
}

const COLUMNS: &str = "username, display_name, realm, ha1_md5, ha1_sha256, created_ms, updated_ms";

/// Inserts an agent; `Conflict` when the username exists.
pub(crate) async fn insert<DB>(pool: &Pool<DB>, a: &AgentRow) -> Result<(), StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query::<DB>(&format!(
        "INSERT INTO agents ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    ))
    .bind(a.username.as_str())
    .bind(a.display_name.as_deref())
    .bind(a.realm.as_str())
    .bind(a.ha1_md5.as_str())
    .bind(a.ha1_sha256.as_str())
    .bind(a.created_ms)
    .bind(a.updated_ms)
    .execute(pool)
    .await
    .map_err(|e| StoreError::from_sqlx(e, Entity::Agent, &a.username))?;
    Ok(())
}

/// Replaces an agent's display name and secrets; `NotFound` when absent.
pub(crate) async fn update<DB>(pool: &Pool<DB>, a: &AgentRow) -> Result<(), StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
{
    let done: Option<(String,)> = sqlx::query_as::<DB, _>(
        "UPDATE agents SET display_name = $2, realm = $3, ha1_md5 = $4, ha1_sha256 = $5, \
         updated_ms = $6 WHERE username = $1 RETURNING username",
    )
    .bind(a.username.as_str())
    .bind(a.display_name.as_deref())
    .bind(a.realm.as_str())
    .bind(a.ha1_md5.as_str())
    .bind(a.ha1_sha256.as_str())
    .bind(a.updated_ms)
    .fetch_optional(pool)
    .await?;
    done.map(|_| ()).ok_or(StoreError::NotFound {
        entity: Entity::Agent,
        id: a.username.clone(),
    })
}

/// Every stored agent by username.
pub(crate) async fn list<DB>(pool: &Pool<DB>) -> Result<Vec<AgentRow>, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> AgentRow: FromRow<'r, DB::Row>,
{
    Ok(
        sqlx::query_as::<DB, AgentRow>(&format!("SELECT {COLUMNS} FROM agents ORDER BY username"))
            .fetch_all(pool)
            .await?,
    )
}

/// One stored agent.
pub(crate) async fn get<DB>(pool: &Pool<DB>, username: &str) -> Result<Option<AgentRow>, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'r> AgentRow: FromRow<'r, DB::Row>,
{
    Ok(
        sqlx::query_as::<DB, AgentRow>(&format!(
            "SELECT {COLUMNS} FROM agents WHERE username = $1"
        ))
        .bind(username)
        .fetch_optional(pool)
        .await?,
    )
}

/// Deletes an agent; whether it existed.
pub(crate) async fn delete<DB>(pool: &Pool<DB>, username: &str) -> Result<bool, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
{
    let gone: Option<(String,)> =
        sqlx::query_as::<DB, _>("DELETE FROM agents WHERE username = $1 RETURNING username")
            .bind(username)
            .fetch_optional(pool)
            .await?;
    Ok(gone.is_some())
}

/// Stores an agent token's hash (`via`: `api` or `share_link`).
pub(crate) async fn insert_token<DB>(
    pool: &Pool<DB>,
    token_sha256: &str,
    agent: &str,
    via: &str,
    created_ms: i64,
) -> Result<(), StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query::<DB>(
        "INSERT INTO agent_tokens (token_sha256, agent, via, created_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(token_sha256)
    .bind(agent)
    .bind(via)
    .bind(created_ms)
    .execute(pool)
    .await?;
    Ok(())
}

/// The agent a token hash belongs to.
pub(crate) async fn token_agent<DB>(
    pool: &Pool<DB>,
    token_sha256: &str,
) -> Result<Option<String>, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
{
    let row: Option<(String,)> =
        sqlx::query_as::<DB, _>("SELECT agent FROM agent_tokens WHERE token_sha256 = $1")
            .bind(token_sha256)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|r| r.0))
}

/// Revokes every token of an agent; how many.
pub(crate) async fn delete_tokens<DB>(pool: &Pool<DB>, agent: &str) -> Result<u64, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
{
    let gone: Vec<(String,)> =
        sqlx::query_as::<DB, _>("DELETE FROM agent_tokens WHERE agent = $1 RETURNING token_sha256")
            .bind(agent)
            .fetch_all(pool)
            .await?;
    Ok(gone.len() as u64)
}
