//! Smart View evaluation for the queue refresh (R6) and the call history it
//! needs (R4). Mirrors `Store::evaluate_view` of the `views` branch; switch
//! to it once that lands.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::claim::with_pool;
use crate::leads::query::{
    compile, fetch_ids_postgres, fetch_ids_sqlite, parse, CustomFieldCatalog, Dialect, QueryError,
};
use crate::store::{Store, StoreError};

/// Why a view could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The query does not parse or compile (SPEC §3).
    #[error("bad query {0}")]
    Query(#[from] QueryError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ViewError {
    fn from(e: sqlx::Error) -> Self {
        ViewError::Store(StoreError::from(e))
    }
}

/// Every lead id the view `query` selects, in view order (R1), as of `now`.
pub async fn evaluate_view(
    store: &Store,
    query: &str,
    now: DateTime<Utc>,
) -> Result<Vec<i64>, ViewError> {
    let ast = parse(query)?;
    Ok(match store {
        Store::Sqlite(s) => {
            let cat = CustomFieldCatalog::load_sqlite(s.pool()).await?;
            let q = compile(&ast, Dialect::Sqlite, now, &cat)?;
            fetch_ids_sqlite(s.pool(), &q).await?
        }
        Store::Postgres(s) => {
            let cat = CustomFieldCatalog::load_postgres(s.pool()).await?;
            let q = compile(&ast, Dialect::Postgres, now, &cat)?;
            fetch_ids_postgres(s.pool(), &q).await?
        }
    })
}

/// R4 "by any session": the latest call to each lead called after
/// `since_ms`, epoch ms.
pub async fn recent_calls(store: &Store, since_ms: i64) -> Result<HashMap<i64, i64>, StoreError> {
    let rows: Vec<(i64, i64)> = with_pool!(store, p => sqlx::query_as(
        "SELECT id, last_call_ms FROM leads WHERE last_call_ms > $1",
    )
    .bind(since_ms)
    .fetch_all(p)
    .await?);
    Ok(rows.into_iter().collect())
}
