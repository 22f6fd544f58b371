//! Smart View queries (SPEC §3): text → tokens (`lexer`) → tree (`parser`,
//! `ast`) → canonical text (`print`) or parameterised SQL (`sql`).
//!
//! This is a core: it never reads the clock; the compiler takes `now`.
//!
//! ```
//! use powerdial::leads::query::{parse, print};
//! let q = parse(r#"lead_status:potential and not called < "4 hours ago""#).unwrap();
//! assert_eq!(print(&q), r#"lead_status:"potential" not called < "4 hours ago""#);
//! ```

pub mod ast;
pub mod lexer;
pub mod parser;
pub mod print;
pub mod sql;

pub use ast::Query;
pub use parser::parse;
pub use print::print;
pub use sql::{
    compile, compile_members, fetch_ids_postgres, fetch_ids_sqlite, CompiledQuery, CustomField,
    CustomFieldCatalog, CustomFieldKind, Dialect, Excluding, IdsQuery, SqlParam, Unsorted,
    MAX_MEMBER_IDS,
};

/// A query that cannot be parsed or compiled: where, what was expected and
/// what was found (SPEC §3: "a syntax error is a 400 with the position and
/// what was expected").
///
/// Displays as `at 17: expected a value after ':' but found end of query`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {position}: expected {expected} but found {found}")]
pub struct QueryError {
    /// Char offset (not byte offset) into the query text.
    pub position: usize,
    /// What would have been valid there.
    pub expected: String,
    /// What was there instead.
    pub found: String,
}

impl QueryError {
    /// An error at char offset `position`.
    pub fn new(position: usize, expected: impl Into<String>, found: impl Into<String>) -> Self {
        QueryError {
            position,
            expected: expected.into(),
            found: found.into(),
        }
    }
}
