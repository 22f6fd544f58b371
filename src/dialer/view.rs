//! What the queue refresh (R6) reads: the view's lead ids in order (through
//! [`Store::evaluate_view`]) and the recent call history (R4).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::store::claims::with_pool;
use crate::store::views::ViewError;
use crate::store::{Store, StoreError};

/// Every lead id the view `query` selects, in view order (R1), as of `now`.
pub async fn evaluate_view(
    store: &Store,
    query: &str,
    now: DateTime<Utc>,
) -> Result<Vec<i64>, ViewError> {
    store.evaluate_view(query, now).await
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
