//! Smart View evaluation over the store (SPEC §3): a query's text is
//! parsed, compiled against the custom fields defined at that moment, and
//! run on the backend the store talks to, giving lead ids in view order.
//!
//! The dialer's queue refresh (R6) calls [`Store::evaluate_view`]; the
//! HTTP API pages through a view with [`Store::evaluate_view_page`].

use chrono::{DateTime, Utc};

use super::{Store, StoreError};
use crate::leads::query::{
    compile, compile_members, fetch_ids_postgres, fetch_ids_sqlite, parse, CompiledQuery,
    CustomFieldCatalog, Dialect, QueryError, MAX_MEMBER_IDS,
};

/// Largest Smart View query text accepted, in bytes: the parser bounds
/// nesting, this bounds the work and the SQL a single view can produce.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

/// Why a Smart View could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The query does not parse, names a custom field that does not exist,
    /// or compares a field with a value of the wrong type (SPEC §3: "a
    /// syntax error is a 400 with the position and what was expected").
    #[error("bad query {0}")]
    Query(#[from] QueryError),
    /// The query text is longer than [`MAX_QUERY_BYTES`].
    #[error("query longer than {MAX_QUERY_BYTES} bytes")]
    TooLong,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// The SQL dialect of this store's backend.
    pub fn dialect(&self) -> Dialect {
        match self {
            Store::Sqlite(_) => Dialect::Sqlite,
            Store::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The custom fields as the query compiler resolves them (`custom.NAME`,
    /// case-insensitive; SPEC §3).
    pub async fn query_catalog(&self) -> Result<CustomFieldCatalog, StoreError> {
        Ok(match self {
            Store::Sqlite(s) => CustomFieldCatalog::load_sqlite(s.pool()).await?,
            Store::Postgres(s) => CustomFieldCatalog::load_postgres(s.pool()).await?,
        })
    }

    /// Parses and compiles `query` for this backend as of `now` (the
    /// instant `now` and `"N units ago"` refer to; SPEC §3). This is also
    /// the validation `POST /api/v1/smart-views` applies before storing.
    pub async fn compile_view(
        &self,
        query: &str,
        now: DateTime<Utc>,
    ) -> Result<CompiledQuery, ViewError> {
        if query.len() > MAX_QUERY_BYTES {
            return Err(ViewError::TooLong);
        }
        // Parse first: a syntax error needs no database round trip.
        let ast = parse(query)?;
        let catalog = self.query_catalog().await?;
        Ok(compile(&ast, self.dialect(), now, &catalog)?)
    }

    /// Runs a compiled query and returns lead ids in view order.
    pub async fn run_view(&self, compiled: &CompiledQuery) -> Result<Vec<i64>, StoreError> {
        Ok(match self {
            Store::Sqlite(s) => fetch_ids_sqlite(s.pool(), compiled).await?,
            Store::Postgres(s) => fetch_ids_postgres(s.pool(), compiled).await?,
        })
    }

    /// Every lead id the view `query` selects, in view order, as of `now`
    /// (SPEC §3; the dialer's queue refresh, R6).
    pub async fn evaluate_view(
        &self,
        query: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>, ViewError> {
        let compiled = self.compile_view(query, now).await?;
        Ok(self.run_view(&compiled).await?)
    }

    /// Which of the leads `ids` the view `query` selects as of `now`,
    /// without evaluating the whole view: R6 for a few changed leads (an
    /// edit, a call's outcome), SPEC §6 "a lead change reaches the queue in
    /// under 100 ms without re-evaluating the whole view".
    pub async fn view_members(
        &self,
        query: &str,
        now: DateTime<Utc>,
        ids: &[i64],
    ) -> Result<std::collections::HashSet<i64>, ViewError> {
        if query.len() > MAX_QUERY_BYTES {
            return Err(ViewError::TooLong);
        }
        let ast = parse(query)?;
        let catalog = self.query_catalog().await?;
        let mut out = std::collections::HashSet::new();
        for chunk in ids.chunks(MAX_MEMBER_IDS) {
            let compiled = compile_members(&ast, self.dialect(), now, &catalog, chunk)?;
            out.extend(self.run_view(&compiled).await?);
        }
        Ok(out)
    }

    /// One page of the view: at most `limit` ids after skipping `offset`,
    /// in view order (`GET /api/v1/smart-views/{id}/leads`, SPEC §4).
    pub async fn evaluate_view_page(
        &self,
        query: &str,
        now: DateTime<Utc>,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<i64>, ViewError> {
        let compiled = self.compile_view(query, now).await?;
        if page_from_whole_view(&compiled, offset) {
            let ids = self.run_view(&compiled).await?;
            let skip = usize::try_from(offset).unwrap_or(usize::MAX);
            return Ok(ids.into_iter().skip(skip).take(limit as usize).collect());
        }
        // An offset past i64::MAX selects nothing either way.
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        Ok(self
            .run_view(&compiled.page(i64::from(limit), offset))
            .await?)
    }
}

/// Offset from which a page of a view with [`CompiledQuery::excluding`]
/// is cut from the whole view rather than read with LIMIT and OFFSET.
/// The joined page reads the view in order up to its offset, probing
/// each lead's value: on PostgreSQL at 1,000,000 leads (the Next Call
/// Date filter, load 4) 58 ms at offset 10,000, 200 ms at 50,000, 650 ms
/// at 200,000, where the whole view takes 150–300 ms (BENCHMARKS.md).
const JOINED_PAGE_MAX_OFFSET: u64 = 10_000;

/// Whether the page at `offset` of `compiled` is cheaper cut from the
/// whole view, evaluated in the forms [`Store::evaluate_view`] uses, than
/// read as one query with LIMIT and OFFSET (SPEC §6: a page is one view
/// evaluation at most).
///
/// A view with an unsorted form is sorted after it is read, whatever the
/// page: the page query would join and sort every lead of the view too
/// (`sort:-"Next Call Date"` as one query: 480–720 ms on PostgreSQL at
/// 1,000,000 leads for the first page; SQLite's views read in id order
/// sort all their matches, e.g. the Next Call Date filter: 0.3 s for the
/// first page, 2.1 s at offset 500,000). A view with conditions a
/// missing value satisfies, read in view order, pays for the leads
/// before the page ([`JOINED_PAGE_MAX_OFFSET`]).
fn page_from_whole_view(compiled: &CompiledQuery, offset: u64) -> bool {
    compiled.unsorted.is_some()
        || (compiled.excluding.is_some() && offset >= JOINED_PAGE_MAX_OFFSET)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(query: &str, dialect: Dialect) -> CompiledQuery {
        let mut catalog = CustomFieldCatalog::new();
        catalog.insert(
            "Next Call Date",
            8,
            crate::leads::query::CustomFieldKind::Date,
        );
        let ast = parse(query).expect("parses");
        let now = DateTime::from_timestamp_millis(1_793_534_400_000).unwrap_or_default();
        compile(&ast, dialect, now, &catalog).expect("compiles")
    }

    /// Pages read with LIMIT and OFFSET only where that reads less than
    /// the whole view; the rest are cut from the whole view.
    #[test]
    fn pages_are_cut_from_the_whole_view_where_that_is_cheaper() {
        let filter = r#"("custom.Next Call Date" < now or "custom.Next Call Date":"")"#;
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            // Sorted in Rust by keys read apart: every page.
            let keyed = compiled(r#"sort:-"Next Call Date""#, dialect);
            assert!(page_from_whole_view(&keyed, 0), "{dialect:?}");
            // In view order from an index: LIMIT and OFFSET.
            let plain = compiled("sort:-created", dialect);
            assert!(!page_from_whole_view(&plain, 1_000_000), "{dialect:?}");
        }
        // The leads failing a condition removed in Rust: read in view
        // order by PostgreSQL, deep pages cut from the whole view; SQLite
        // reads this view in id order and sorts it, every page.
        let pg = compiled(filter, Dialect::Postgres);
        assert!(!page_from_whole_view(&pg, 0));
        assert!(!page_from_whole_view(&pg, JOINED_PAGE_MAX_OFFSET - 1));
        assert!(page_from_whole_view(&pg, JOINED_PAGE_MAX_OFFSET));
        assert!(page_from_whole_view(&compiled(filter, Dialect::Sqlite), 0));
    }
}
