//! Compiles a Smart View query to parameterised SQL over the schema in
//! `migrations/{sqlite,postgres}/0001_leads.sql` (SPEC §3: "compiled to
//! parameterised SQL, never string-spliced values").
//!
//! Every value the user wrote becomes a bind parameter; the SQL text holds
//! only fixed fragments and placeholders. Every predicate is NULL-safe (it
//! yields true or false, never NULL), so `not` is plain `NOT`:
//!
//! - text equality is case-insensitive (`lower(x) = lower(?)`; SQLite's
//!   `lower` folds ASCII only, PostgreSQL's all of Unicode); `field:""`
//!   matches an empty or missing value;
//! - a missing value (custom field unset, `called` for a never-called lead,
//!   opportunity without a value) matches no comparison, except
//!   `latest_call_created`, where a never-called lead counts as infinitely
//!   old (SPEC §3: it matches `latest_call_created > "5 days ago"`);
//! - `"N units ago"` compares age: `created > "6 months ago"` is
//!   `created_ms < now - 6 months`; months and years are calendar months;
//! - a date `YYYY-MM-DD` is a whole UTC day: `created:"2024-05-01"` is that
//!   day, `created < "2024-05-01"` before it, `created <= "2024-05-01"`
//!   up to its end;
//! - sorting puts missing values last either way, then breaks ties by lead
//!   id; text sorts compare lower-cased text bytewise on both backends.
//!
//! The SQL is shaped for 1,000,000 leads (SPEC §6): each custom field the
//! query names is one `LEFT JOIN` on its `(lead_id, field_id)` key instead
//! of a subquery per lead and per mention, a missing value is tested with
//! `IS NULL` / `IS NOT NULL` rather than `COALESCE` (so planners can drive
//! the query from an index and turn the join into an inner one), and
//! `opportunities:N` is an `EXISTS` test rather than a count per lead.

use std::collections::HashMap;

use chrono::{DateTime, Months, NaiveDate, NaiveDateTime, TimeDelta, Utc};

use super::ast::{
    Age, AgeUnit, CompareOp, Cond, Expr, LeadField, LeadTerm, OpportunityField, Pos, Query, Test,
    Value, ValueKind,
};
use super::print::quote;
use super::QueryError;

/// The SQL dialect to emit: placeholders and collation differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// SQLite: `?` placeholders.
    Sqlite,
    /// PostgreSQL: `$1`, `$2`, ... placeholders.
    Postgres,
}

/// A bind parameter of a compiled query.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    /// A BIGINT: epoch milliseconds, counts, ids.
    Int(i64),
    /// A DOUBLE PRECISION: custom numbers, opportunity values.
    Float(f64),
    /// TEXT.
    Text(String),
}

/// A query compiled to SQL selecting `leads.id` in view order (SPEC §3).
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledQuery {
    /// `SELECT l.id FROM leads l [NOT INDEXED] [LEFT JOIN ...] [WHERE ...]
    /// ORDER BY ...`.
    pub sql: String,
    /// The values for the placeholders, in order.
    pub params: Vec<SqlParam>,
    /// The dialect `sql` is written in.
    pub dialect: Dialect,
    /// For a whole view sorted by one integer key (a time: `created` by
    /// default, `updated`, `called`, a date custom field) that the database
    /// would sort itself: the same selection without ORDER BY, its matches
    /// then sorted in Rust (missing keys last, ties by id, as the ORDER BY).
    /// A sort of 1,000,000 integer pairs takes tens of milliseconds where
    /// SQLite's sorter took seconds and PostgreSQL's a spilling external
    /// merge (SPEC §6, 500 ms per view; BENCHMARKS.md). `None` when an
    /// index already yields the view order or the sort is not such a key.
    pub unsorted: Option<Unsorted>,
    /// When the filter has conditions on one custom field that a lead
    /// without a value satisfies (`("custom.Next Call Date" < now or
    /// "custom.Next Call Date":"")`, `not custom.X:a`): the view without
    /// them, and per condition the leads that have a value failing it,
    /// removed in Rust. `None` otherwise, and for a page.
    pub excluding: Option<Excluding>,
}

/// The split form of a [`CompiledQuery`] (see its `excluding`).
///
/// A condition that a missing value satisfies cannot be driven from the
/// field's value index: the database visits every lead and probes its
/// value (SQLite: a primary-key lookup per lead; PostgreSQL: a hash join
/// of 1,000,000 leads with the field's values, then a sort of the
/// matches; 660 ms on a quiet machine for the Next Call Date example,
/// SPEC §6 allows 500; BENCHMARKS.md). The leads that *fail* it all have
/// a value, so they are one range of that index (`lcv_ms`, `lcv_num`,
/// `lcv_text`: `(field_id, value)`), read while the rest of the view runs
/// on its own (with no filter left, an index scan in view order); the
/// ids are then dropped from the view's list, which keeps its order.
#[derive(Debug, Clone, PartialEq)]
pub struct Excluding {
    /// The view without the excluded conditions, in view order; its own
    /// `excluding` is `None`.
    pub rest: Box<CompiledQuery>,
    /// Per excluded condition, `SELECT cv.lead_id AS id FROM
    /// lead_custom_values cv WHERE cv.field_id = … AND cv.value_… IS NOT
    /// NULL AND …`: the leads with a value of the field that fails it, the
    /// negation written out (`x >= now` for `x < now`) so that it is a
    /// range of the field's value index.
    pub failing: Vec<IdsQuery>,
}

/// A query selecting a column `id` of lead ids, in no particular order.
#[derive(Debug, Clone, PartialEq)]
pub struct IdsQuery {
    /// The SQL text.
    pub sql: String,
    /// The values for its placeholders, in order.
    pub params: Vec<SqlParam>,
}

/// The unordered form of a [`CompiledQuery`] (see its `unsorted`).
#[derive(Debug, Clone, PartialEq)]
pub struct Unsorted {
    /// `SELECT l.id, <key> AS k FROM …` without ORDER BY; with
    /// [`Unsorted::key_field`] set, `SELECT l.id FROM …` only.
    pub sql: String,
    /// The values for `sql`'s placeholders, in order.
    pub params: Vec<SqlParam>,
    /// Whether the key sorts descending.
    pub descending: bool,
    /// A sort by a date custom field that the filter does not name: the
    /// keys are read on their own (`lead_id`, `value_ms` of this field,
    /// one scan of its index in key order) and matched to the ids in
    /// Rust, instead of joining every
    /// selected lead with its value (PostgreSQL: a hash join of 1,000,000
    /// rows, most of `sort:-"Next Call Date"`; SQLite: a primary-key probe
    /// per lead).
    pub key_field: Option<i64>,
}

impl CompiledQuery {
    /// The same query limited to one page: `limit` ids after skipping
    /// `offset` (for `GET /api/v1/smart-views/{id}/leads`, SPEC §4).
    pub fn page(&self, limit: i64, offset: i64) -> CompiledQuery {
        let mut page = self.clone();
        // LIMIT and OFFSET apply to the ordered rows: SQL sorts and
        // filters a page.
        page.unsorted = None;
        page.excluding = None;
        page.params.push(SqlParam::Int(limit));
        let limit_ph = placeholder(self.dialect, page.params.len());
        page.params.push(SqlParam::Int(offset));
        let offset_ph = placeholder(self.dialect, page.params.len());
        page.sql = format!("{} LIMIT {limit_ph} OFFSET {offset_ph}", self.sql);
        page
    }
}

fn placeholder(dialect: Dialect, index: usize) -> String {
    match dialect {
        Dialect::Sqlite => "?".to_string(),
        Dialect::Postgres => format!("${index}"),
    }
}

/// The type of a custom field, as stored in `custom_fields.kind` (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CustomFieldKind {
    /// Free text, in `value_text`.
    Text,
    /// A number, in `value_num`.
    Number,
    /// A date (midnight UTC), in `value_ms`.
    Date,
    /// A date and time, in `value_ms`.
    DateTime,
    /// One of a list of choices, in `value_text`.
    Choices,
}

impl CustomFieldKind {
    /// Reads the `custom_fields.kind` column value.
    pub fn parse(kind: &str) -> Option<CustomFieldKind> {
        Some(match kind {
            "text" => CustomFieldKind::Text,
            "number" => CustomFieldKind::Number,
            "date" => CustomFieldKind::Date,
            "datetime" => CustomFieldKind::DateTime,
            "choices" => CustomFieldKind::Choices,
            _ => return None,
        })
    }

    /// The `custom_fields.kind` column value.
    pub fn as_str(self) -> &'static str {
        match self {
            CustomFieldKind::Text => "text",
            CustomFieldKind::Number => "number",
            CustomFieldKind::Date => "date",
            CustomFieldKind::DateTime => "datetime",
            CustomFieldKind::Choices => "choices",
        }
    }
}

/// A custom field's id and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CustomField {
    /// `custom_fields.id`.
    pub id: i64,
    /// `custom_fields.kind`.
    pub kind: CustomFieldKind,
}

/// The custom fields a query may name, by case-insensitive name (SPEC §3:
/// `custom.NAME`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomFieldCatalog {
    fields: HashMap<String, CustomField>,
}

impl CustomFieldCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the field named `name`, matched case-insensitively.
    pub fn insert(&mut self, name: &str, id: i64, kind: CustomFieldKind) {
        self.fields
            .insert(name.to_lowercase(), CustomField { id, kind });
    }

    /// The field named `name`, case-insensitively.
    pub fn get(&self, name: &str) -> Option<CustomField> {
        self.fields.get(&name.to_lowercase()).copied()
    }

    /// The field whose id is `id`.
    fn get_by_id(&self, id: i64) -> Option<CustomField> {
        self.fields.values().find(|f| f.id == id).copied()
    }

    fn from_rows(rows: Vec<(i64, String, String)>) -> Result<Self, sqlx::Error> {
        let mut catalog = Self::new();
        for (id, name, kind) in rows {
            let kind = CustomFieldKind::parse(&kind).ok_or_else(|| {
                sqlx::Error::Protocol(format!("custom field {id} has unknown kind {kind:?}"))
            })?;
            catalog.insert(&name, id, kind);
        }
        Ok(catalog)
    }

    /// Reads every row of `custom_fields` from SQLite.
    pub async fn load_sqlite(pool: &sqlx::SqlitePool) -> Result<Self, sqlx::Error> {
        let rows = sqlx::query_as("SELECT id, name, kind FROM custom_fields")
            .fetch_all(pool)
            .await?;
        Self::from_rows(rows)
    }

    /// Reads every row of `custom_fields` from PostgreSQL.
    pub async fn load_postgres(pool: &sqlx::PgPool) -> Result<Self, sqlx::Error> {
        let rows = sqlx::query_as("SELECT id, name, kind FROM custom_fields")
            .fetch_all(pool)
            .await?;
        Self::from_rows(rows)
    }
}

/// Compiles `query` for `dialect` (SPEC §3). `now` is the current instant,
/// for `now` and `"N units ago"`; `fields` resolves `custom.NAME`.
///
/// Errors: an unknown custom field (at the field), a value of the wrong type
/// (`opportunities:"abc"`, at the value), an operator the field's type has
/// no meaning for (`name < "x"`, at the operator).
pub fn compile(
    query: &Query,
    dialect: Dialect,
    now: DateTime<Utc>,
    fields: &CustomFieldCatalog,
) -> Result<CompiledQuery, QueryError> {
    compile_inner(query, dialect, now, fields, None)
}

/// Compiles `query` like [`compile`], restricted to the leads `ids` and in
/// no particular order: which of these leads the view selects. It checks
/// a few changed leads against a view without evaluating the whole view
/// (R6; SPEC §6 "a lead change reaches the queue in under 100 ms"): the
/// planner starts from the primary key, so the cost follows `ids.len()`,
/// not the number of leads. `ids` must be non-empty and at most
/// [`MAX_MEMBER_IDS`] long (bound parameters are limited).
pub fn compile_members(
    query: &Query,
    dialect: Dialect,
    now: DateTime<Utc>,
    fields: &CustomFieldCatalog,
    ids: &[i64],
) -> Result<CompiledQuery, QueryError> {
    compile_inner(query, dialect, now, fields, Some(ids))
}

/// Most ids [`compile_members`] takes: SQLite binds at most 32,766
/// parameters and a query may bind a few hundred of its own.
pub const MAX_MEMBER_IDS: usize = 10_000;

fn compile_inner(
    query: &Query,
    dialect: Dialect,
    now: DateTime<Utc>,
    fields: &CustomFieldCatalog,
    restrict: Option<&[i64]>,
) -> Result<CompiledQuery, QueryError> {
    let mut c = Compiler {
        dialect,
        now,
        fields,
        sql: String::from("SELECT l.id FROM leads l"),
        params: Vec::new(),
        joins: Vec::new(),
        members: restrict.is_some(),
    };
    let id_order = restrict.is_none() && dialect == Dialect::Sqlite && scans_in_id_order(query);
    if id_order {
        c.sql.push_str(" NOT INDEXED");
    }
    c.join_custom_fields(query);
    if let Some(ids) = restrict {
        // Before the filter: placeholders are numbered in text order.
        c.sql.push_str(" WHERE l.id IN (");
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                c.sql.push_str(", ");
            }
            c.bind(SqlParam::Int(*id));
        }
        c.sql.push(')');
        if let Some(filter) = &query.filter {
            c.sql.push_str(" AND ");
            c.expr(filter)?;
        }
        // Sort fields must still name fields that exist.
        for sort in &query.sorts {
            c.lead_scalar(&sort.field, sort.pos)?;
        }
        return Ok(CompiledQuery {
            sql: c.sql,
            params: c.params,
            dialect,
            unsorted: None,
            excluding: None,
        });
    }
    if let Some(filter) = &query.filter {
        c.sql.push_str(" WHERE ");
        c.expr(filter)?;
    }
    // A sort by a custom field the filter does not name: its keys are read
    // on their own ([`Unsorted::key_field`]), on both backends. Otherwise
    // PostgreSQL keeps its ORDER BY: returning a joined view's keys to
    // sort here measured slower than its own parallel sort (BENCHMARKS.md).
    let mut unsorted = rust_sorted(query, dialect, now, fields)?.filter(|u| u.key_field.is_some());
    if unsorted.is_none() && id_order {
        let key = match query.sorts.as_slice() {
            [] => Some(("l.created_ms".to_string(), false)),
            [sort] => {
                let scalar = c.lead_scalar(&sort.field, sort.pos)?;
                (scalar.ty == ValueType::Time).then(|| {
                    let mark = c.sql.len();
                    c.scalar(&scalar);
                    (c.sql.split_off(mark), sort.descending)
                })
            }
            _ => None,
        };
        if let Some((key, descending)) = key {
            let body = c.sql.strip_prefix("SELECT l.id").unwrap_or(&c.sql);
            unsorted = Some(Unsorted {
                sql: format!("SELECT l.id, {key} AS k{body}"),
                params: c.params.clone(),
                descending,
                key_field: None,
            });
        }
    }
    c.sql.push_str(" ORDER BY ");
    if query.sorts.is_empty() {
        c.sql.push_str("l.created_ms ASC, ");
    }
    for sort in &query.sorts {
        let scalar = c.lead_scalar(&sort.field, sort.pos)?;
        c.sort_key(&scalar);
        c.sql
            .push_str(if sort.descending { " DESC" } else { " ASC" });
        // A key that is never NULL (`created`, `updated`, `opportunities`)
        // sorts the same either way; PostgreSQL's planner does not know
        // that, and only `DESC` as written (NULLS FIRST) is the backward
        // scan of an ascending index: `lead_status:"Potential"
        // sort:-created` then reads `leads_status_lc_created` backwards
        // and sorts only the ties by id (an incremental sort) instead of
        // sorting all its 333,000 leads with an external merge; migration
        // 0057 gives `leads_created_desc` that order (BENCHMARKS.md).
        let never_null = scalar.missing == Missing::Never
            && matches!(scalar.ty, ValueType::Number { .. } | ValueType::Time);
        if !(sort.descending && never_null && c.dialect == Dialect::Postgres) {
            c.sql.push_str(" NULLS LAST");
        }
        c.sql.push_str(", ");
    }
    c.sql.push_str("l.id ASC");
    // After the whole query compiled: its errors come first, and a page
    // runs it whole.
    let excluding = excluding(query, dialect, now, fields)?;
    Ok(CompiledQuery {
        sql: c.sql,
        params: c.params,
        dialect,
        unsorted,
        excluding,
    })
}

/// The [`Excluding`] form of `query`, when its filter has top-level
/// conditions on one custom field alone that a lead without a value
/// satisfies.
fn excluding(
    query: &Query,
    dialect: Dialect,
    now: DateTime<Utc>,
    fields: &CustomFieldCatalog,
) -> Result<Option<Excluding>, QueryError> {
    let Some(filter) = &query.filter else {
        return Ok(None);
    };
    let items = match filter {
        Expr::And(items) => items.as_slice(),
        one => std::slice::from_ref(one),
    };
    let mut kept = Vec::new();
    let mut failing = Vec::new();
    for item in items {
        let field = match one_custom_field(item, fields) {
            Some(id) if satisfied_when_missing(item) => id,
            _ => {
                kept.push(item.clone());
                continue;
            }
        };
        let mut c = Compiler {
            dialect,
            now,
            fields,
            sql: String::from(
                "SELECT cv.lead_id AS id FROM lead_custom_values cv WHERE cv.field_id = ",
            ),
            params: Vec::new(),
            // The field's alias is `cv`, as the first join's.
            joins: vec![field],
            members: false,
        };
        c.bind(SqlParam::Int(field));
        // A value that is NULL is missing, which satisfies the condition.
        let column = match fields.get_by_id(field).map(|f| f.kind) {
            Some(CustomFieldKind::Number) => "value_num",
            Some(CustomFieldKind::Date | CustomFieldKind::DateTime) => "value_ms",
            _ => "value_text",
        };
        c.sql
            .push_str(&format!(" AND cv.{column} IS NOT NULL AND "));
        c.present(item, true)?;
        failing.push(IdsQuery {
            sql: c.sql,
            params: c.params,
        });
    }
    if failing.is_empty() {
        return Ok(None);
    }
    let rest = Query {
        filter: match kept.len() {
            0 => None,
            1 => kept.pop(),
            _ => Some(Expr::And(kept)),
        },
        sorts: query.sorts.clone(),
    };
    let rest = compile_inner(&rest, dialect, now, fields, None)?;
    Ok(Some(Excluding {
        rest: Box::new(rest),
        failing,
    }))
}

/// The custom field `expr` tests, if it tests exactly one custom field
/// and nothing else.
fn one_custom_field(expr: &Expr<LeadTerm>, fields: &CustomFieldCatalog) -> Option<i64> {
    fn walk(expr: &Expr<LeadTerm>, fields: &CustomFieldCatalog, id: &mut Option<i64>) -> bool {
        match expr {
            Expr::And(items) | Expr::Or(items) => items.iter().all(|i| walk(i, fields, id)),
            Expr::Not(inner) => walk(inner, fields, id),
            Expr::Term(LeadTerm::Cond(cond)) => {
                let LeadField::Custom(name) = &cond.field else {
                    return false;
                };
                let Some(field) = fields.get(name) else {
                    return false;
                };
                *id.get_or_insert(field.id) == field.id
            }
            Expr::Term(LeadTerm::Opportunity(..)) => false,
        }
    }
    let mut id = None;
    walk(expr, fields, &mut id).then_some(id).flatten()
}

/// Whether `expr`, over one custom field ([`one_custom_field`]), holds for
/// a lead without a value, as [`Compiler::compare`] and
/// [`Compiler::empty`] compile it: `field:""` holds, every other
/// comparison fails.
fn satisfied_when_missing(expr: &Expr<LeadTerm>) -> bool {
    match expr {
        Expr::And(items) => items.iter().all(satisfied_when_missing),
        Expr::Or(items) => items.iter().any(satisfied_when_missing),
        Expr::Not(inner) => !satisfied_when_missing(inner),
        Expr::Term(LeadTerm::Cond(cond)) => {
            let empty = |v: &Value| v.kind == ValueKind::Text(String::new());
            match &cond.test {
                Test::Compare { value, .. } => empty(value),
                Test::In { negated, values } => values.iter().any(empty) != *negated,
            }
        }
        Expr::Term(LeadTerm::Opportunity(..)) => false,
    }
}

/// The [`Unsorted`] form of a view that names a custom field (filter or
/// sort) and is sorted by one time key; the caller keeps it only when the
/// sort field's keys are read on their own ([`Unsorted::key_field`]).
///
/// Sorted by a custom field, a view joins every lead with its value and
/// sorts them all: PostgreSQL hash-joins 1,000,000 leads and sorts them
/// with an external merge (2.3 s at load 10 where the two plain scans
/// took 0.55 s; BENCHMARKS.md), SQLite probes the value of each lead.
fn rust_sorted(
    query: &Query,
    dialect: Dialect,
    now: DateTime<Utc>,
    fields: &CustomFieldCatalog,
) -> Result<Option<Unsorted>, QueryError> {
    let mut c = Compiler {
        dialect,
        now,
        fields,
        sql: String::from("SELECT l.id FROM leads l"),
        params: Vec::new(),
        joins: Vec::new(),
        members: false,
    };
    let mut filter_fields = Vec::new();
    if let Some(filter) = &query.filter {
        c.custom_ids_in(filter, &mut filter_fields);
    }
    let (key, descending) = match query.sorts.as_slice() {
        [] if filter_fields.is_empty() => return Ok(None),
        [] => (None, false),
        [sort] => {
            let scalar = c.lead_scalar(&sort.field, sort.pos)?;
            if scalar.ty != ValueType::Time {
                return Ok(None);
            }
            let custom = match scalar.source {
                Source::Custom { id, .. } => Some(id),
                _ => None,
            };
            if custom.is_none() && filter_fields.is_empty() {
                return Ok(None);
            }
            (Some((scalar, custom)), sort.descending)
        }
        _ => return Ok(None),
    };
    // A sort field the filter does not name is not joined: its keys are
    // read separately ([`Unsorted::key_field`]).
    let key_field = key
        .as_ref()
        .and_then(|(_, custom)| *custom)
        .filter(|id| !filter_fields.contains(id));
    c.join_fields(filter_fields);
    if let Some(filter) = &query.filter {
        c.sql.push_str(" WHERE ");
        c.expr(filter)?;
    }
    // PostgreSQL reads every lead id of an unfiltered view with a scan of
    // the table, not of the primary key: the index-only scan took 64–66
    // against 104–108 ms in psql, but its 43 MB of pages evicted the
    // other view indexes from a default 128 MB of shared buffers (the
    // `sort:-created` scan after it read 2,600–5,600 pages from outside
    // them, against 27–256 after a table scan, which keeps to a small
    // ring of buffers), and in the bench, at load 6–10, it made
    // `sort:-"Next Call Date"` no faster (BENCHMARKS.md).
    if key_field.is_none() {
        let mark = c.sql.len();
        match &key {
            Some((scalar, _)) => c.scalar(scalar),
            None => c.sql.push_str("l.created_ms"),
        }
        let key_sql = c.sql.split_off(mark);
        let body = c.sql.strip_prefix("SELECT l.id").unwrap_or(&c.sql);
        c.sql = format!("SELECT l.id, {key_sql} AS k{body}");
    }
    Ok(Some(Unsorted {
        sql: c.sql,
        params: c.params,
        descending,
        key_field,
    }))
}

/// Whether SQLite should read `leads` in id order (`NOT INDEXED`) and sort
/// the matches afterwards (SPEC §6, measured over 1,000,000 leads).
///
/// Left to itself, SQLite walks an index of `leads` in view order (or the
/// smallest covering index) and then visits the lead rows, custom values
/// and opportunities in that order: random reads, each a page fetch through
/// a small page cache, several seconds per view. Custom values and
/// opportunities are keyed by lead id first, so in id order those reads are
/// sequential, and sorting the matches is cheaper than the random reads;
/// `NOT INDEXED` still lets SQLite drive the query from a custom-value
/// index and look leads up by id. Only a plain sort of all leads by a lead
/// column keeps its index, which it reads in order without lookups.
///
/// When a top-level condition can be answered from an index of `leads`
/// (a status equality, a `created`, `updated` or `called` range) the
/// planner keeps its choice: the index bounds the rows it visits.
fn scans_in_id_order(query: &Query) -> bool {
    let sorts_by_lookup = query
        .sorts
        .iter()
        .any(|s| matches!(s.field, LeadField::Custom(_)));
    match &query.filter {
        None => sorts_by_lookup,
        Some(Expr::And(items)) => !items.iter().any(lead_index_can_drive),
        Some(term) => !lead_index_can_drive(term),
    }
}

/// Whether an index of `leads` (migrations 0001 and 0003) can find the
/// leads that satisfy `expr` without reading the others.
fn lead_index_can_drive(expr: &Expr<LeadTerm>) -> bool {
    let Expr::Term(LeadTerm::Cond(cond)) = expr else {
        return false;
    };
    let empty = |v: &Value| v.kind == ValueKind::Text(String::new());
    match (&cond.field, &cond.test) {
        (
            LeadField::Status | LeadField::Created | LeadField::Updated | LeadField::Called,
            Test::Compare { value, .. },
        ) => !empty(value),
        (LeadField::Status, Test::In { negated, values }) => !negated && !values.iter().any(empty),
        _ => false,
    }
}

/// Runs a compiled SQLite query and returns the lead ids in view order.
///
/// The ids come back as one text value (`group_concat` over the ordered
/// query) rather than one row each: a view of 1,000,000 leads otherwise
/// spends most of its time handing rows one by one from sqlx's SQLite
/// thread to the caller (SPEC §6, 500 ms per view; measured in
/// BENCHMARKS.md). The ordered query is a subquery with its own ORDER BY,
/// which SQLite never flattens into an aggregate and runs as a co-routine
/// feeding rows in that order; the query tests check the order of every
/// example view.
pub async fn fetch_ids_sqlite(
    pool: &sqlx::SqlitePool,
    q: &CompiledQuery,
) -> Result<Vec<i64>, sqlx::Error> {
    if q.dialect != Dialect::Sqlite {
        return Err(sqlx::Error::Protocol(
            "a PostgreSQL query run on SQLite".to_string(),
        ));
    }
    if let Some(e) = &q.excluding {
        // On other connections at once, as the two scans of a key field.
        let failing = async {
            let mut sets = Vec::new();
            for f in &e.failing {
                sets.push(sqlite_ids(pool, &f.sql, &f.params).await?);
            }
            Ok(sets)
        };
        let (ids, failing) = tokio::try_join!(fetch_whole_sqlite(pool, &e.rest), failing)?;
        return Ok(without(ids, failing));
    }
    fetch_whole_sqlite(pool, q).await
}

/// [`fetch_ids_sqlite`] for a query without [`CompiledQuery::excluding`].
async fn fetch_whole_sqlite(
    pool: &sqlx::SqlitePool,
    q: &CompiledQuery,
) -> Result<Vec<i64>, sqlx::Error> {
    match &q.unsorted {
        Some(u) if u.key_field.is_some() => return fetch_keyed_sqlite(pool, u).await,
        Some(u) => return fetch_unsorted_sqlite(pool, u).await,
        None => {}
    }
    sqlite_ids(pool, &q.sql, &q.params).await
}

/// `group_concat(id)` over `sql`, bound with `params`, split.
async fn sqlite_ids(
    pool: &sqlx::SqlitePool,
    sql: &str,
    params: &[SqlParam],
) -> Result<Vec<i64>, sqlx::Error> {
    let sql = format!("SELECT group_concat(id) FROM ({sql})");
    let mut query = sqlx::query_scalar::<sqlx::Sqlite, Option<String>>(&sql);
    for p in params {
        query = match p {
            SqlParam::Int(v) => query.bind(*v),
            SqlParam::Float(v) => query.bind(*v),
            SqlParam::Text(v) => query.bind(v.as_str()),
        };
    }
    let Some(text) = query.fetch_one(pool).await? else {
        return Ok(Vec::new());
    };
    text.split(',').map(parse_id).collect()
}

/// [`fetch_ids_sqlite`] for a query with [`Unsorted::key_field`]: the ids
/// and the field's leads in key order, read at once on two connections
/// (see [`fetch_unsorted_postgres`]) and matched here.
///
/// The keys themselves are not read: the field's leads come grouped by
/// key (one `GROUP BY value_ms` pass over `lcv_ms` in key order, each
/// group's ids joined by `,` and the groups by `;`), which is all that
/// [`order_by_keys`] needs to sort the ties. Writing 660,000 keys as text
/// and parsing them back was a third of the work of this query (sqlite3
/// on 1,000,000 leads: 121–123 → 77–81 ms of CPU; BENCHMARKS.md).
async fn fetch_keyed_sqlite(
    pool: &sqlx::SqlitePool,
    u: &Unsorted,
) -> Result<Vec<i64>, sqlx::Error> {
    let field = u.key_field.unwrap_or_default();
    let keys = format!(
        "SELECT group_concat(ids, ';') FROM (SELECT group_concat(lead_id) AS ids \
         FROM lead_custom_values WHERE field_id = ? AND value_ms IS NOT NULL \
         GROUP BY value_ms ORDER BY value_ms {})",
        if u.descending { "DESC" } else { "ASC" }
    );
    let keys = sqlx::query_scalar::<sqlx::Sqlite, Option<String>>(&keys)
        .bind(field)
        .fetch_one(pool);
    let (ids, groups) = tokio::try_join!(sqlite_ids(pool, &u.sql, &u.params), keys)?;
    let mut keyed = Vec::new();
    if let Some(groups) = groups {
        // The group's rank stands for its key: only equality and the
        // order of the groups matter to `order_by_keys`.
        for (rank, group) in (0i64..).zip(groups.split(';')) {
            for lead in group.split(',') {
                keyed.push((parse_id(lead)?, rank));
            }
        }
    }
    Ok(order_by_keys(ids, keyed))
}

/// The `(lead_id, value_ms)` pairs of one date field (`field_id =
/// <placeholder>`), in key order: a scan of the index `lcv_ms` in its
/// order, ties in any order (PostgreSQL; SQLite reads them grouped by
/// key, [`fetch_keyed_sqlite`]).
fn key_order_sql(descending: bool, placeholder: &str) -> String {
    format!(
        "SELECT lead_id, value_ms FROM lead_custom_values \
         WHERE field_id = {placeholder} AND value_ms IS NOT NULL ORDER BY value_ms {}",
        if descending { "DESC" } else { "ASC" }
    )
}

fn parse_id(id: &str) -> Result<i64, sqlx::Error> {
    id.parse::<i64>()
        .map_err(|_| sqlx::Error::Protocol(format!("not a lead id: {id:?}")))
}

/// [`fetch_ids_sqlite`] for a query with [`CompiledQuery::unsorted`]: the
/// ids and their keys as two aligned lists (both aggregates read the same
/// rows in the same order; a missing key is an empty entry), sorted here
/// as the ORDER BY would: by key, missing keys last either way, then by id.
async fn fetch_unsorted_sqlite(
    pool: &sqlx::SqlitePool,
    u: &Unsorted,
) -> Result<Vec<i64>, sqlx::Error> {
    let sql = format!(
        "SELECT group_concat(id), group_concat(ifnull(k, '')) FROM ({})",
        u.sql
    );
    let mut query = sqlx::query_as::<sqlx::Sqlite, (Option<String>, Option<String>)>(&sql);
    for p in &u.params {
        query = match p {
            SqlParam::Int(v) => query.bind(*v),
            SqlParam::Float(v) => query.bind(*v),
            SqlParam::Text(v) => query.bind(v.as_str()),
        };
    }
    let (Some(ids), Some(keys)) = query.fetch_one(pool).await? else {
        return Ok(Vec::new());
    };
    let mut rows = Vec::new();
    for (id, key) in ids.split(',').zip(keys.split(',')) {
        let key = if key.is_empty() {
            None
        } else {
            Some(parse_id(key)?)
        };
        rows.push((key, parse_id(id)?));
    }
    Ok(sort_by_key(rows, u.descending))
}

/// `ids` in their order, without those in any of `failing` (see
/// [`Excluding`]).
fn without(mut ids: Vec<i64>, failing: Vec<Vec<i64>>) -> Vec<i64> {
    let drop = IdSet::new(&failing.concat());
    ids.retain(|id| !drop.contains(*id));
    ids
}

/// A set of lead ids, to match a view's ids with other lists of ids in
/// Rust ([`Excluding`], [`Unsorted::key_field`]).
///
/// Lead ids are assigned in sequence, so the ids of a view are dense: one
/// bit per id of their range (125 KB for 1,000,000 leads, in cache) where
/// a hash set of the same ids takes tens of megabytes, rehashes as it
/// grows and misses the cache on every probe. Measured with a standalone
/// copy of [`order_by_keys`] on 1,000,000 ids and 660,000 keys (load 8.5):
/// 18–26 ms with bits, 120–210 ms with `FxHashSet`, 80–105 ms for the
/// former sort of every id by its key (93 M, 172 M and 712 M
/// instructions, callgrind). Sparse ids (a range over 64 times their
/// number) fall back to a hash set. Written here: a crate's bit set
/// (`fixedbitset`) would still need this range offset and fallback.
enum IdSet {
    /// Bit `id - base` of `words`.
    Bits { base: i64, words: Vec<u64> },
    /// Ids too sparse for bits.
    Hash(rustc_hash::FxHashSet<i64>),
}

impl IdSet {
    fn new(ids: &[i64]) -> IdSet {
        let (Some(&min), Some(&max)) = (ids.iter().min(), ids.iter().max()) else {
            return IdSet::Hash(Default::default());
        };
        let span = i128::from(max) - i128::from(min) + 1;
        let dense = 64 * ids.len() as i128 + 4096;
        let words = usize::try_from(span / 64 + 1)
            .ok()
            .filter(|_| span <= dense);
        let Some(words) = words else {
            return IdSet::Hash(ids.iter().copied().collect());
        };
        let mut set = IdSet::Bits {
            base: min,
            words: vec![0; words],
        };
        if let IdSet::Bits { words, .. } = &mut set {
            for &id in ids {
                let (word, bit) = IdSet::slot(min, id);
                words[word] |= bit;
            }
        }
        set
    }

    /// The word and bit of `id` (`base <= id`, within the set's range).
    fn slot(base: i64, id: i64) -> (usize, u64) {
        let offset = (i128::from(id) - i128::from(base)) as u128;
        ((offset / 64) as usize, 1 << (offset % 64))
    }

    /// `id`'s word and bit if it is in the bits' range.
    fn bit(base: i64, words: &[u64], id: i64) -> Option<(usize, u64)> {
        let offset = i128::from(id) - i128::from(base);
        (offset >= 0 && offset < 64 * words.len() as i128).then(|| IdSet::slot(base, id))
    }

    fn contains(&self, id: i64) -> bool {
        match self {
            IdSet::Bits { base, words } => {
                IdSet::bit(*base, words, id).is_some_and(|(w, b)| words[w] & b != 0)
            }
            IdSet::Hash(set) => set.contains(&id),
        }
    }

    /// Removes `id`; whether it was there.
    fn remove(&mut self, id: i64) -> bool {
        match self {
            IdSet::Bits { base, words } => match IdSet::bit(*base, words, id) {
                Some((w, b)) if words[w] & b != 0 => {
                    words[w] &= !b;
                    true
                }
                _ => false,
            },
            IdSet::Hash(set) => set.remove(&id),
        }
    }
}

/// Orders `(key, id)` pairs as a view's ORDER BY does: by key (descending
/// if asked), missing keys last either way, then by id.
fn sort_by_key(mut rows: Vec<(Option<i64>, i64)>, descending: bool) -> Vec<i64> {
    rows.sort_unstable_by(|a, b| {
        let by_key = match (a.0, b.0) {
            (Some(x), Some(y)) if descending => y.cmp(&x),
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        by_key.then(a.1.cmp(&b.1))
    });
    rows.into_iter().map(|(_, id)| id).collect()
}

/// Runs a compiled PostgreSQL query and returns the lead ids in view order.
///
/// As on SQLite, the ids come back as one value (`ARRAY(subquery)` over
/// the ordered query) instead of a row each, which dominated large views.
/// The array holds the subquery's rows in the order it returns them; the
/// query tests check it.
pub async fn fetch_ids_postgres(
    pool: &sqlx::PgPool,
    q: &CompiledQuery,
) -> Result<Vec<i64>, sqlx::Error> {
    if q.dialect != Dialect::Postgres {
        return Err(sqlx::Error::Protocol(
            "a SQLite query run on PostgreSQL".to_string(),
        ));
    }
    if let Some(e) = &q.excluding {
        // On other connections at once, as the two scans of a key field;
        // a lead that changed in between is placed as of either snapshot,
        // and the change itself reaches the queue (R6).
        let failing = async {
            let mut sets = Vec::new();
            for f in &e.failing {
                sets.push(pg_ids(pool, &f.sql, &f.params).await?);
            }
            Ok(sets)
        };
        let (ids, failing) = tokio::try_join!(fetch_whole_postgres(pool, &e.rest), failing)?;
        return Ok(without(ids, failing));
    }
    fetch_whole_postgres(pool, q).await
}

/// [`fetch_ids_postgres`] for a query without [`CompiledQuery::excluding`].
async fn fetch_whole_postgres(
    pool: &sqlx::PgPool,
    q: &CompiledQuery,
) -> Result<Vec<i64>, sqlx::Error> {
    if let Some(unsorted) = &q.unsorted {
        return fetch_unsorted_postgres(pool, unsorted).await;
    }
    pg_ids(pool, &q.sql, &q.params).await
}

/// `ARRAY(sql)` (its column `id`), bound with `params`.
async fn pg_ids(
    pool: &sqlx::PgPool,
    sql: &str,
    params: &[SqlParam],
) -> Result<Vec<i64>, sqlx::Error> {
    // `ARRAY(subquery)` keeps the subquery's order like `array_agg` over
    // it, without an aggregate node: 1,000,000 ids in view order in a
    // median of 74–84 against 97–116 ms (psql, load 5–7; BENCHMARKS.md).
    let sql = format!("SELECT ARRAY({sql})");
    let mut query = sqlx::query_scalar::<sqlx::Postgres, Option<Vec<i64>>>(&sql);
    for p in params {
        query = match p {
            SqlParam::Int(v) => query.bind(*v),
            SqlParam::Float(v) => query.bind(*v),
            SqlParam::Text(v) => query.bind(v.as_str()),
        };
    }
    Ok(query.fetch_one(pool).await?.unwrap_or_default())
}

/// [`fetch_ids_postgres`] for a query with [`CompiledQuery::unsorted`]:
/// the ids and keys as two aligned arrays (one aggregate pass over the
/// same rows), or, with [`Unsorted::key_field`], the ids and the field's
/// `(lead_id, value_ms)` pairs read at once on two connections and
/// matched here; then sorted as the ORDER BY would.
///
/// The two reads of the second form see two snapshots a few milliseconds
/// apart: which leads are in the view comes from the first alone, and a
/// lead whose key changed in between is placed by its old or new key,
/// either of which it had; the change itself reaches the queue (R6).
async fn fetch_unsorted_postgres(
    pool: &sqlx::PgPool,
    u: &Unsorted,
) -> Result<Vec<i64>, sqlx::Error> {
    let Some(field) = u.key_field else {
        let sql = format!("SELECT array_agg(id), array_agg(k) FROM ({}) v", u.sql);
        type Arrays = (Option<Vec<i64>>, Option<Vec<Option<i64>>>);
        let mut query = sqlx::query_as::<sqlx::Postgres, Arrays>(&sql);
        for p in &u.params {
            query = match p {
                SqlParam::Int(v) => query.bind(*v),
                SqlParam::Float(v) => query.bind(*v),
                SqlParam::Text(v) => query.bind(v.as_str()),
            };
        }
        let (ids, keys) = query.fetch_one(pool).await?;
        let (ids, keys) = (ids.unwrap_or_default(), keys.unwrap_or_default());
        if ids.len() != keys.len() {
            return Err(sqlx::Error::Protocol(
                "a view's ids and keys differ in length".to_string(),
            ));
        }
        let rows = keys.into_iter().zip(ids).collect();
        return Ok(sort_by_key(rows, u.descending));
    };
    let keys = format!(
        "SELECT array_agg(lead_id), array_agg(value_ms) FROM ({}) v",
        key_order_sql(u.descending, "$1")
    );
    let keys = sqlx::query_as::<sqlx::Postgres, (Option<Vec<i64>>, Option<Vec<i64>>)>(&keys)
        .bind(field)
        .fetch_one(pool);
    let (ids, (key_ids, key_values)) = tokio::try_join!(pg_ids(pool, &u.sql, &u.params), keys)?;
    let keyed: Vec<(i64, i64)> = key_ids
        .unwrap_or_default()
        .into_iter()
        .zip(key_values.unwrap_or_default())
        .collect();
    Ok(order_by_keys(ids, keyed))
}

/// Orders the view's `ids` by the keys `keyed`: `(lead_id, key)` for
/// every lead with a key (at most one each: `(lead_id, field_id)` is the
/// primary key), already in key order as the field's index yields them
/// ([`key_order_sql`]; or a key's rank in that order, the same to this
/// function). As the ORDER BY would: the view's leads with a
/// key in that order, ties by id, then those without a key by id.
///
/// Only the ties and the leads without a key are sorted here, instead of
/// every lead of the view by its key (a million-element sort was most of
/// the time of `sort:-"Next Call Date"` once its keys were read apart).
fn order_by_keys(ids: Vec<i64>, mut keyed: Vec<(i64, i64)>) -> Vec<i64> {
    let mut start = 0;
    while start < keyed.len() {
        let key = keyed[start].1;
        let run = keyed[start..].iter().take_while(|(_, k)| *k == key).count();
        // Equal keys: by lead id.
        keyed[start..start + run].sort_unstable();
        start += run;
    }
    let mut members = IdSet::new(&ids);
    let mut ordered = Vec::with_capacity(ids.len());
    for (lead, _) in keyed {
        if members.remove(lead) {
            ordered.push(lead);
        }
    }
    let mut unkeyed: Vec<i64> = ids.into_iter().filter(|id| members.contains(*id)).collect();
    unkeyed.sort_unstable();
    ordered.extend(unkeyed);
    ordered
}

/// What a missing (NULL) value means for a scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// The column is NOT NULL.
    Never,
    /// Missing: matches no comparison, only `field:""`.
    Unknown,
    /// Infinitely old (`latest_call_created` of a never-called lead).
    Ancient,
}

/// How values compare for a scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueType {
    Text,
    /// Opportunity `status_type`: Active, Won or Lost.
    StatusType,
    Number {
        integer: bool,
    },
    Time,
}

/// Where a scalar's value comes from.
#[derive(Debug, Clone)]
enum Source {
    /// A fixed SQL expression.
    Column(&'static str),
    /// `lead_custom_values.<column>` for one field, through the field's
    /// `LEFT JOIN`: NULL when the lead has no value.
    Custom { id: i64, column: &'static str },
}

/// One value per lead (or per opportunity) that a condition tests.
#[derive(Debug, Clone)]
struct Scalar {
    source: Source,
    ty: ValueType,
    missing: Missing,
    /// PostgreSQL: a column holding `lower(<source>)`, compared instead of
    /// lower-casing every row (`leads.status_lc`, migration 0051).
    folded: Option<&'static str>,
    /// The field as written, for error messages.
    name: String,
}

/// A bound on a time value: `x <op> ms`.
type Bound = (&'static str, i64);

struct Compiler<'a> {
    dialect: Dialect,
    now: DateTime<Utc>,
    fields: &'a CustomFieldCatalog,
    sql: String,
    params: Vec<SqlParam>,
    /// Custom field ids joined, in join order (aliases: [`join_alias`]).
    joins: Vec<i64>,
    /// Compiling for a few given leads ([`compile_members`]).
    members: bool,
}

trait CompileLeaf {
    fn compile(&self, c: &mut Compiler<'_>) -> Result<(), QueryError>;
}

impl CompileLeaf for LeadTerm {
    fn compile(&self, c: &mut Compiler<'_>) -> Result<(), QueryError> {
        match self {
            LeadTerm::Cond(cond) => {
                let scalar = c.lead_scalar(&cond.field, cond.pos)?;
                c.test(&scalar, &cond.test)
            }
            LeadTerm::Opportunity(inner, _) if c.members => {
                // A few given leads: probe each one's opportunities
                // (index `(lead_id, …)`) rather than collect every lead
                // with such an opportunity.
                c.sql
                    .push_str("EXISTS (SELECT 1 FROM opportunities o WHERE o.lead_id = l.id AND ");
                c.expr(inner)?;
                c.sql.push(')');
                Ok(())
            }
            LeadTerm::Opportunity(inner, _) => {
                // The set of leads with such an opportunity, not a test per
                // lead: SQLite then reads the few matching opportunities
                // once (index `opportunities_status_created`, migration
                // 0050) and looks their leads up by id, instead of probing
                // the opportunities of each of 1,000,000 leads (SPEC §6).
                // `lead_id` is NOT NULL, so `IN` is true or false, never
                // NULL, like the `EXISTS` it stands for; PostgreSQL plans
                // both as the same semi-join.
                c.sql
                    .push_str("l.id IN (SELECT o.lead_id FROM opportunities o WHERE ");
                c.expr(inner)?;
                c.sql.push(')');
                Ok(())
            }
        }
    }
}

impl CompileLeaf for Cond<OpportunityField> {
    fn compile(&self, c: &mut Compiler<'_>) -> Result<(), QueryError> {
        let (column, ty, missing) = match self.field {
            OpportunityField::Created => ("o.created_ms", ValueType::Time, Missing::Never),
            OpportunityField::StatusType => {
                ("o.status_type", ValueType::StatusType, Missing::Never)
            }
            OpportunityField::Value => (
                "o.value",
                ValueType::Number { integer: false },
                Missing::Unknown,
            ),
        };
        let scalar = Scalar {
            source: Source::Column(column),
            ty,
            missing,
            folded: None,
            name: self.field.name().to_string(),
        };
        c.test(&scalar, &self.test)
    }
}

impl Compiler<'_> {
    fn bind(&mut self, param: SqlParam) {
        self.params.push(param);
        let ph = placeholder(self.dialect, self.params.len());
        self.sql.push_str(&ph);
    }

    fn expr<T: CompileLeaf>(&mut self, expr: &Expr<T>) -> Result<(), QueryError> {
        match expr {
            Expr::And(items) | Expr::Or(items) => {
                let sep = if matches!(expr, Expr::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                self.sql.push('(');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.sql.push_str(sep);
                    }
                    self.expr(item)?;
                }
                self.sql.push(')');
            }
            Expr::Not(inner) => {
                self.sql.push_str("NOT (");
                self.expr(inner)?;
                self.sql.push(')');
            }
            Expr::Term(t) => t.compile(self)?,
        }
        Ok(())
    }

    fn lead_scalar(&self, field: &LeadField, pos: Pos) -> Result<Scalar, QueryError> {
        let (column, ty, missing) = match field {
            LeadField::Status => ("l.status", ValueType::Text, Missing::Never),
            LeadField::Name => ("l.name", ValueType::Text, Missing::Never),
            LeadField::Created => ("l.created_ms", ValueType::Time, Missing::Never),
            LeadField::Updated => ("l.updated_ms", ValueType::Time, Missing::Never),
            LeadField::Called => ("l.last_call_ms", ValueType::Time, Missing::Unknown),
            LeadField::LatestCallCreated => ("l.last_call_ms", ValueType::Time, Missing::Ancient),
            // Kept on write by triggers (migration 0051): a column read,
            // not a count or an anti-join per lead (SPEC §6).
            LeadField::Opportunities => (
                "l.opportunity_count",
                ValueType::Number { integer: true },
                Missing::Never,
            ),
            LeadField::Custom(name) => {
                let Some(custom) = self.fields.get(name) else {
                    return Err(QueryError::new(
                        pos.0,
                        "a custom field that exists",
                        format!("custom.{}", quote(name)),
                    ));
                };
                let (column, ty) = match custom.kind {
                    CustomFieldKind::Text | CustomFieldKind::Choices => {
                        ("value_text", ValueType::Text)
                    }
                    CustomFieldKind::Number => ("value_num", ValueType::Number { integer: false }),
                    CustomFieldKind::Date | CustomFieldKind::DateTime => {
                        ("value_ms", ValueType::Time)
                    }
                };
                return Ok(Scalar {
                    source: Source::Custom {
                        id: custom.id,
                        column,
                    },
                    ty,
                    missing: Missing::Unknown,
                    folded: None,
                    name: format!("custom.{}", quote(name)),
                });
            }
        };
        let folded = (*field == LeadField::Status && self.dialect == Dialect::Postgres)
            .then_some("l.status_lc");
        Ok(Scalar {
            source: Source::Column(column),
            ty,
            missing,
            folded,
            name: field.builtin_name().unwrap_or_default().to_string(),
        })
    }

    /// Adds one `LEFT JOIN` per custom field the query names (filter or
    /// sort), before any condition is written, so that its field id is the
    /// first parameter(s) in text order as `?` placeholders require. The
    /// primary key `(lead_id, field_id)` makes each join match at most one
    /// row: the join never repeats a lead. Unknown fields are skipped here
    /// and reported, at their position, by the pass that writes conditions.
    fn join_custom_fields(&mut self, query: &Query) {
        let mut ids = Vec::new();
        if let Some(filter) = &query.filter {
            self.custom_ids_in(filter, &mut ids);
        }
        for sort in &query.sorts {
            self.custom_id(&sort.field, &mut ids);
        }
        self.join_fields(ids);
    }

    /// One `LEFT JOIN` per custom field id, in order (see
    /// [`Compiler::join_custom_fields`]).
    fn join_fields(&mut self, ids: Vec<i64>) {
        for id in ids {
            self.joins.push(id);
            let alias = join_alias(self.joins.len());
            self.sql.push_str(&format!(
                " LEFT JOIN lead_custom_values {alias} ON {alias}.lead_id = l.id \
                 AND {alias}.field_id = "
            ));
            self.bind(SqlParam::Int(id));
        }
    }

    fn custom_ids_in(&self, expr: &Expr<LeadTerm>, ids: &mut Vec<i64>) {
        match expr {
            Expr::And(items) | Expr::Or(items) => {
                for item in items {
                    self.custom_ids_in(item, ids);
                }
            }
            Expr::Not(inner) => self.custom_ids_in(inner, ids),
            Expr::Term(LeadTerm::Cond(cond)) => self.custom_id(&cond.field, ids),
            // Opportunity fields are never custom fields.
            Expr::Term(LeadTerm::Opportunity(..)) => {}
        }
    }

    fn custom_id(&self, field: &LeadField, ids: &mut Vec<i64>) {
        if let LeadField::Custom(name) = field {
            if let Some(custom) = self.fields.get(name) {
                if !ids.contains(&custom.id) {
                    ids.push(custom.id);
                }
            }
        }
    }

    /// Writes the scalar's SQL expression.
    fn scalar(&mut self, scalar: &Scalar) {
        match &scalar.source {
            Source::Column(column) => self.sql.push_str(column),
            Source::Custom { id, column } => {
                // Every custom field of the query was joined up front.
                let n = self.joins.iter().position(|j| j == id).map_or(0, |i| i + 1);
                self.sql.push_str(&format!("{}.{column}", join_alias(n)));
            }
        }
    }

    /// Writes an ORDER BY key; text compares lower-cased, empty as missing.
    fn sort_key(&mut self, scalar: &Scalar) {
        match scalar.ty {
            ValueType::Text | ValueType::StatusType => {
                self.sql.push_str("lower(NULLIF(");
                self.scalar(scalar);
                self.sql.push_str(", ''))");
                if self.dialect == Dialect::Postgres {
                    // Bytewise, as SQLite's BINARY: the view order must not
                    // depend on the backend or the server's locale.
                    self.sql.push_str(" COLLATE \"C\"");
                }
            }
            ValueType::Number { .. } | ValueType::Time => self.scalar(scalar),
        }
    }

    fn test(&mut self, scalar: &Scalar, test: &Test) -> Result<(), QueryError> {
        match test {
            Test::Compare { op, op_pos, value } => self.compare(scalar, *op, *op_pos, value, false),
            Test::In { negated, values } => {
                self.sql.push_str(if *negated { "NOT (" } else { "(" });
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        self.sql.push_str(" OR ");
                    }
                    self.compare(scalar, CompareOp::Eq, value.pos, value, true)?;
                }
                self.sql.push(')');
                Ok(())
            }
        }
    }

    /// Writes one NULL-safe comparison `scalar op value`.
    fn compare(
        &mut self,
        scalar: &Scalar,
        op: CompareOp,
        op_pos: Pos,
        value: &Value,
        in_list: bool,
    ) -> Result<(), QueryError> {
        if value.kind == ValueKind::Text(String::new()) {
            return self.empty(scalar, op, op_pos);
        }
        match scalar.ty {
            ValueType::Text => {
                if op != CompareOp::Eq {
                    return Err(op_error(scalar, op, op_pos, "':' or 'in'"));
                }
                let text = text_value(value)?;
                self.guarded(scalar, false, |c| {
                    match scalar.folded {
                        Some(folded) => c.sql.push_str(folded),
                        None => {
                            c.sql.push_str("lower(");
                            c.scalar(scalar);
                            c.sql.push(')');
                        }
                    }
                    c.sql.push_str(" = lower(");
                    c.bind(SqlParam::Text(text));
                    c.sql.push(')');
                });
                Ok(())
            }
            ValueType::StatusType => {
                if op != CompareOp::Eq {
                    return Err(op_error(scalar, op, op_pos, "':' or 'in'"));
                }
                let text = text_value(value)?;
                let canonical = ["Active", "Won", "Lost"]
                    .into_iter()
                    .find(|s| s.eq_ignore_ascii_case(&text))
                    .ok_or_else(|| {
                        QueryError::new(value.pos.0, "Active, Won or Lost", quote(&text))
                    })?;
                self.guarded(scalar, false, |c| {
                    c.scalar(scalar);
                    c.sql.push_str(" = ");
                    c.bind(SqlParam::Text(canonical.to_string()));
                });
                Ok(())
            }
            ValueType::Number { integer } => {
                let param = number_value(value, integer)?;
                self.guarded(scalar, false, |c| {
                    c.scalar(scalar);
                    c.sql.push(' ');
                    c.sql.push_str(sql_op(op));
                    c.sql.push(' ');
                    c.bind(param);
                });
                Ok(())
            }
            ValueType::Time => {
                let bounds = self.time_bounds(op, op_pos, value, in_list)?;
                // A never-called lead is older than any instant: it meets
                // every upper bound and no lower bound (SPEC §3).
                let ancient_matches = bounds.iter().all(|(op, _)| op.starts_with('<'));
                self.guarded(scalar, ancient_matches, |c| {
                    for (i, (op, ms)) in bounds.iter().enumerate() {
                        if i > 0 {
                            c.sql.push_str(" AND ");
                        }
                        c.scalar(scalar);
                        c.sql.push(' ');
                        c.sql.push_str(op);
                        c.sql.push(' ');
                        c.bind(SqlParam::Int(*ms));
                    }
                });
                Ok(())
            }
        }
    }

    /// Writes `expr`, conditions on one custom field (an [`Excluding`]
    /// set, the field joined as `cv`), for a row whose value is present
    /// (the caller tests `IS NOT NULL`), negated if `negated`. The
    /// negation is pushed down to the comparisons (De Morgan; `<` becomes
    /// `>=`, `:""` of a date is false, of a text `= ''`) so that the
    /// planners see a range of the field's value index rather than a
    /// `NOT (…)` they would test row by row.
    fn present(&mut self, expr: &Expr<LeadTerm>, negated: bool) -> Result<(), QueryError> {
        match expr {
            Expr::And(items) | Expr::Or(items) => {
                let and = matches!(expr, Expr::And(_)) != negated;
                self.sql.push('(');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.sql.push_str(if and { " AND " } else { " OR " });
                    }
                    self.present(item, negated)?;
                }
                self.sql.push(')');
            }
            Expr::Not(inner) => self.present(inner, !negated)?,
            Expr::Term(LeadTerm::Cond(cond)) => {
                let scalar = self.lead_scalar(&cond.field, cond.pos)?;
                match &cond.test {
                    Test::Compare { op, op_pos, value } => {
                        self.present_compare(&scalar, *op, *op_pos, value, false, negated)?
                    }
                    Test::In {
                        negated: not_in,
                        values,
                    } => {
                        // `x in (a, b)` is `x:a or x:b`.
                        let negated = negated != *not_in;
                        self.sql.push('(');
                        for (i, value) in values.iter().enumerate() {
                            if i > 0 {
                                self.sql.push_str(if negated { " AND " } else { " OR " });
                            }
                            self.present_compare(
                                &scalar,
                                CompareOp::Eq,
                                value.pos,
                                value,
                                true,
                                negated,
                            )?;
                        }
                        self.sql.push(')');
                    }
                }
            }
            Expr::Term(term) => {
                // Not a custom-field condition ([`one_custom_field`] keeps
                // them out): the general form.
                self.sql.push_str(if negated { "NOT (" } else { "(" });
                term.compile(self)?;
                self.sql.push(')');
            }
        }
        Ok(())
    }

    /// One comparison of [`Compiler::present`]: `scalar op value`, or its
    /// negation, for a present value.
    fn present_compare(
        &mut self,
        scalar: &Scalar,
        op: CompareOp,
        op_pos: Pos,
        value: &Value,
        in_list: bool,
        negated: bool,
    ) -> Result<(), QueryError> {
        let (and, flip) = if negated {
            (" OR ", true)
        } else {
            (" AND ", false)
        };
        let written = |op: &'static str| if flip { negated_op(op) } else { op };
        if value.kind == ValueKind::Text(String::new()) {
            // `field:""`: only a text value can be empty (SPEC §3).
            if scalar.ty == ValueType::Text {
                self.scalar(scalar);
                self.sql.push_str(if negated { " <> ''" } else { " = ''" });
            } else {
                self.sql.push_str(if negated { "TRUE" } else { "FALSE" });
            }
            return Ok(());
        }
        match scalar.ty {
            ValueType::Text | ValueType::StatusType => {
                if op != CompareOp::Eq {
                    return Err(op_error(scalar, op, op_pos, "':' or 'in'"));
                }
                let text = text_value(value)?;
                self.sql.push_str("lower(");
                self.scalar(scalar);
                self.sql.push_str(") ");
                self.sql.push_str(written("="));
                self.sql.push_str(" lower(");
                self.bind(SqlParam::Text(text));
                self.sql.push(')');
            }
            ValueType::Number { integer } => {
                let param = number_value(value, integer)?;
                self.scalar(scalar);
                self.sql.push(' ');
                self.sql.push_str(written(sql_op(op)));
                self.sql.push(' ');
                self.bind(param);
            }
            ValueType::Time => {
                let bounds = self.time_bounds(op, op_pos, value, in_list)?;
                self.sql.push('(');
                for (i, (op, ms)) in bounds.iter().enumerate() {
                    if i > 0 {
                        self.sql.push_str(and);
                    }
                    self.scalar(scalar);
                    self.sql.push(' ');
                    self.sql.push_str(written(op));
                    self.sql.push(' ');
                    self.bind(SqlParam::Int(*ms));
                }
                self.sql.push(')');
            }
        }
        Ok(())
    }

    /// Wraps a predicate that is NULL when the value is missing so that it
    /// is true or false instead (then `NOT` means what users expect).
    ///
    /// `body` compares the value with bound non-NULL parameters, so it is
    /// NULL exactly when the value is: `v IS NOT NULL AND body` (false when
    /// missing) and `v IS NULL OR body` (true when missing) are never NULL.
    /// Unlike `COALESCE(body, ...)` both are index-friendly, and the first
    /// lets a planner turn a custom field's `LEFT JOIN` into an inner join.
    fn guarded(&mut self, scalar: &Scalar, ancient_matches: bool, body: impl FnOnce(&mut Self)) {
        let fallback = match scalar.missing {
            Missing::Never => None,
            Missing::Unknown => Some(false),
            Missing::Ancient => Some(ancient_matches),
        };
        self.sql.push('(');
        match fallback {
            None => body(self),
            Some(matches) => {
                self.scalar(scalar);
                self.sql.push_str(if matches {
                    " IS NULL OR ("
                } else {
                    " IS NOT NULL AND ("
                });
                body(self);
                self.sql.push(')');
            }
        }
        self.sql.push(')');
    }

    /// `field:""`: the value is missing, or empty text (SPEC §3).
    fn empty(&mut self, scalar: &Scalar, op: CompareOp, op_pos: Pos) -> Result<(), QueryError> {
        if op != CompareOp::Eq {
            return Err(op_error(scalar, op, op_pos, "':' with an empty value"));
        }
        match (scalar.ty, scalar.missing) {
            (ValueType::Text, _) => {
                self.sql.push('(');
                self.scalar(scalar);
                self.sql.push_str(" IS NULL OR ");
                self.scalar(scalar);
                self.sql.push_str(" = '')");
            }
            (_, Missing::Unknown | Missing::Ancient) => {
                self.sql.push('(');
                self.scalar(scalar);
                self.sql.push_str(" IS NULL)");
            }
            (_, Missing::Never) => {
                return Err(QueryError::new(
                    op_pos.0 + 1,
                    format!("a value ({} is never empty)", scalar.name),
                    "\"\"",
                ))
            }
        }
        Ok(())
    }

    /// The bounds `x <op> ms` (all must hold) that `time op value` means.
    fn time_bounds(
        &self,
        op: CompareOp,
        op_pos: Pos,
        value: &Value,
        in_list: bool,
    ) -> Result<Vec<Bound>, QueryError> {
        let point = |op: CompareOp, ms: i64| vec![(sql_op(op), ms)];
        match &value.kind {
            ValueKind::Now => Ok(point(op, self.now.timestamp_millis())),
            ValueKind::Ago(age) => {
                let reversed = match op {
                    CompareOp::Lt => CompareOp::Gt,
                    CompareOp::Gt => CompareOp::Lt,
                    CompareOp::Le => CompareOp::Ge,
                    CompareOp::Ge => CompareOp::Le,
                    CompareOp::Eq if in_list => {
                        return Err(QueryError::new(
                            value.pos.0,
                            "a date or now (an age needs '<', '>', '<=' or '>=')",
                            age_text(*age),
                        ))
                    }
                    CompareOp::Eq => {
                        return Err(QueryError::new(
                            op_pos.0,
                            "'<', '>', '<=' or '>=' before an age",
                            "':'",
                        ))
                    }
                };
                let at = ago(self.now, *age).ok_or_else(|| {
                    QueryError::new(value.pos.0, "an age within the calendar", age_text(*age))
                })?;
                // "older than N" is "before now - N": the operator flips.
                Ok(point(reversed, at.timestamp_millis()))
            }
            ValueKind::Text(text) => match parse_time(text) {
                Some(TimeLiteral::Instant(ms)) => Ok(point(op, ms)),
                Some(TimeLiteral::Day(start, end)) => Ok(match op {
                    CompareOp::Eq => vec![(">=", start), ("<", end)],
                    CompareOp::Lt => vec![("<", start)],
                    CompareOp::Le => vec![("<", end)],
                    CompareOp::Gt => vec![(">=", end)],
                    CompareOp::Ge => vec![(">=", start)],
                }),
                None => Err(QueryError::new(
                    value.pos.0,
                    "a date (YYYY-MM-DD), a date and time (RFC 3339), now or \"N units ago\"",
                    quote(text),
                )),
            },
        }
    }
}

/// The alias of the `n`-th (from 1) custom field join: `cv`, `cv2`, ...
fn join_alias(n: usize) -> String {
    if n <= 1 {
        "cv".to_string()
    } else {
        format!("cv{n}")
    }
}

/// The comparison that holds exactly when `op` does not, for non-NULL
/// operands.
fn negated_op(op: &str) -> &'static str {
    match op {
        "<" => ">=",
        "<=" => ">",
        ">" => "<=",
        ">=" => "<",
        "=" => "<>",
        _ => "=",
    }
}

fn sql_op(op: CompareOp) -> &'static str {
    match op {
        CompareOp::Eq => "=",
        CompareOp::Lt => "<",
        CompareOp::Gt => ">",
        CompareOp::Le => "<=",
        CompareOp::Ge => ">=",
    }
}

fn op_error(scalar: &Scalar, op: CompareOp, op_pos: Pos, allowed: &str) -> QueryError {
    QueryError::new(
        op_pos.0,
        format!("{allowed} for {}", scalar.name),
        format!("'{}'", op.symbol()),
    )
}

fn age_text(age: Age) -> String {
    let plural = if age.amount == 1 { "" } else { "s" };
    format!("\"{} {}{} ago\"", age.amount, age.unit.singular(), plural)
}

fn text_value(value: &Value) -> Result<String, QueryError> {
    match &value.kind {
        ValueKind::Text(t) => Ok(t.clone()),
        ValueKind::Now => Err(QueryError::new(
            value.pos.0,
            "a text value (write \"now\" for the word)",
            "now",
        )),
        ValueKind::Ago(age) => Err(QueryError::new(
            value.pos.0,
            "a text value",
            format!("the age {}", age_text(*age)),
        )),
    }
}

fn number_value(value: &Value, integer: bool) -> Result<SqlParam, QueryError> {
    let expected = if integer {
        "a whole number"
    } else {
        "a number"
    };
    let found = match &value.kind {
        ValueKind::Text(t) => {
            if integer {
                if let Ok(n) = t.trim().parse::<i64>() {
                    return Ok(SqlParam::Int(n));
                }
            } else if let Ok(n) = t.trim().parse::<f64>() {
                if n.is_finite() {
                    return Ok(SqlParam::Float(n));
                }
            }
            quote(t)
        }
        ValueKind::Now => "now".to_string(),
        ValueKind::Ago(age) => age_text(*age),
    };
    Err(QueryError::new(value.pos.0, expected, found))
}

/// Subtracts an age from `now`; months and years are calendar months.
fn ago(now: DateTime<Utc>, age: Age) -> Option<DateTime<Utc>> {
    let n = i64::from(age.amount);
    let seconds = match age.unit {
        AgeUnit::Second => n,
        AgeUnit::Minute => n.checked_mul(60)?,
        AgeUnit::Hour => n.checked_mul(3_600)?,
        AgeUnit::Day => n.checked_mul(86_400)?,
        AgeUnit::Week => n.checked_mul(604_800)?,
        AgeUnit::Month => return now.checked_sub_months(Months::new(age.amount)),
        AgeUnit::Year => return now.checked_sub_months(Months::new(age.amount.checked_mul(12)?)),
    };
    now.checked_sub_signed(TimeDelta::try_seconds(seconds)?)
}

/// A time written in a query.
enum TimeLiteral {
    /// An instant, epoch ms.
    Instant(i64),
    /// A whole UTC day `[start, end)`, epoch ms.
    Day(i64, i64),
}

fn parse_time(text: &str) -> Option<TimeLiteral> {
    let text = text.trim();
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let start = day.and_hms_opt(0, 0, 0)?.and_utc();
        let end = start.checked_add_signed(TimeDelta::try_days(1)?)?;
        return Some(TimeLiteral::Day(
            start.timestamp_millis(),
            end.timestamp_millis(),
        ));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(TimeLiteral::Instant(t.timestamp_millis()));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(TimeLiteral::Instant(t.and_utc().timestamp_millis()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leads::query::parse;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 8, 31, 12, 0, 0)
            .single()
            .unwrap_or_default()
    }

    fn compiled(q: &str, dialect: Dialect) -> Result<CompiledQuery, QueryError> {
        let mut fields = CustomFieldCatalog::new();
        fields.insert("Lead Source", 7, CustomFieldKind::Text);
        fields.insert("Next Call Date", 8, CustomFieldKind::DateTime);
        compile(&parse(q)?, dialect, now(), &fields)
    }

    #[test]
    fn months_are_calendar_months() {
        let age = Age {
            amount: 6,
            unit: AgeUnit::Month,
        };
        let expected = Utc.with_ymd_and_hms(2024, 2, 29, 12, 0, 0).single();
        assert_eq!(ago(now(), age), expected);
    }

    #[test]
    fn values_are_bound_never_spliced() -> Result<(), QueryError> {
        let q = compiled(
            r#"name:"x' OR 1=1 --" lead_status in (a, b)"#,
            Dialect::Postgres,
        )?;
        assert!(!q.sql.contains("OR 1=1"), "{}", q.sql);
        assert!(q.sql.contains("$1") && q.sql.contains("$3"), "{}", q.sql);
        assert_eq!(
            q.params,
            vec![
                SqlParam::Text("x' OR 1=1 --".into()),
                SqlParam::Text("a".into()),
                SqlParam::Text("b".into()),
            ]
        );
        Ok(())
    }

    #[test]
    fn age_flips_the_operator() -> Result<(), QueryError> {
        let q = compiled(r#"created > "5 days ago""#, Dialect::Sqlite)?;
        assert!(q.sql.contains("l.created_ms < ?"), "{}", q.sql);
        let five_days = now().timestamp_millis() - 5 * 86_400_000;
        assert_eq!(q.params, vec![SqlParam::Int(five_days)]);
        Ok(())
    }

    #[test]
    fn placeholders_count_params() -> Result<(), QueryError> {
        for q in [
            r#"custom."Lead Source":x opportunity(value > 3 status_type:won) sort:-"Next Call Date""#,
            r#"created:"2024-01-01" latest_call_created > "1 day ago" name in ("", a)"#,
        ] {
            let s = compiled(q, Dialect::Sqlite)?;
            assert_eq!(s.sql.matches('?').count(), s.params.len(), "{}", s.sql);
            let p = compiled(q, Dialect::Postgres)?.page(10, 20);
            let n = p.params.len();
            assert!(p.sql.contains(&format!("${n}")), "{}", p.sql);
            assert!(!p.sql.contains(&format!("${}", n + 1)), "{}", p.sql);
        }
        Ok(())
    }

    #[test]
    fn custom_fields_are_joined_once_each() -> Result<(), QueryError> {
        let q = r#"custom."Lead Source":a or not custom."lead source":b sort:-"Next Call Date" sort:"Lead Source""#;
        let s = compiled(q, Dialect::Sqlite)?;
        assert_eq!(s.sql.matches("LEFT JOIN").count(), 2, "{}", s.sql);
        assert!(!s.sql.contains("SELECT cv."), "{}", s.sql);
        assert!(s.sql.contains("ORDER BY cv2.value_ms DESC"), "{}", s.sql);
        // The joins come first in the text, so their ids are bound first.
        assert_eq!(&s.params[..2], &[SqlParam::Int(7), SqlParam::Int(8)]);
        let p = compiled(q, Dialect::Postgres)?;
        assert!(p.sql.contains("cv.field_id = $1"), "{}", p.sql);
        assert!(p.sql.contains("cv2.field_id = $2"), "{}", p.sql);
        Ok(())
    }

    #[test]
    fn opportunity_counts_read_the_kept_count() -> Result<(), QueryError> {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let s = compiled("opportunities:0", dialect)?;
            assert!(s.sql.contains("l.opportunity_count = "), "{}", s.sql);
            assert!(!s.sql.contains("EXISTS"), "{}", s.sql);
            assert!(!s.sql.contains("COUNT"), "{}", s.sql);
        }
        Ok(())
    }

    #[test]
    fn postgres_compares_the_stored_lower_case_status() -> Result<(), QueryError> {
        let p = compiled("lead_status:Potential", Dialect::Postgres)?;
        assert!(p.sql.contains("l.status_lc = lower($1)"), "{}", p.sql);
        let s = compiled("lead_status:Potential", Dialect::Sqlite)?;
        assert!(s.sql.contains("lower(l.status) = lower(?)"), "{}", s.sql);
        Ok(())
    }

    /// PostgreSQL: a descending key that is never NULL is plain `DESC`,
    /// the order a backward scan of an ascending index gives; keys that
    /// may be missing keep `NULLS LAST`. SQLite's text is unchanged.
    #[test]
    fn never_null_descending_keys_need_no_nulls_clause() -> Result<(), QueryError> {
        let p = |q: &str| compiled(q, Dialect::Postgres).map(|c| c.sql);
        assert!(p(r#"lead_status:"Potential" sort:-created"#)?
            .ends_with("ORDER BY l.created_ms DESC, l.id ASC"));
        assert!(p("sort:-updated sort:-opportunities")?
            .ends_with("ORDER BY l.updated_ms DESC, l.opportunity_count DESC, l.id ASC"));
        assert!(p("sort:created")?.ends_with("ORDER BY l.created_ms ASC NULLS LAST, l.id ASC"));
        assert!(p("sort:-called")?.ends_with("ORDER BY l.last_call_ms DESC NULLS LAST, l.id ASC"));
        assert!(p("sort:-name")?.contains(r#"COLLATE "C" DESC NULLS LAST"#));
        let s = compiled("sort:-created", Dialect::Sqlite)?.sql;
        assert!(
            s.ends_with("ORDER BY l.created_ms DESC NULLS LAST, l.id ASC"),
            "{s}"
        );
        Ok(())
    }

    /// PostgreSQL sorts in Rust only the views sorted by a custom field
    /// the filter does not name, whose keys are read on their own.
    #[test]
    fn postgres_unsorted_forms() -> Result<(), QueryError> {
        let u = |q: &str| compiled(q, Dialect::Postgres).map(|c| c.unsorted);
        assert_eq!(u("sort:-created")?, None);
        assert_eq!(u("lead_status:a opportunities:0")?, None);
        assert_eq!(u(r#"custom."Lead Source":x sort:name"#)?, None);
        let sort = u(r#"sort:-"Next Call Date""#)?.ok_or_else(|| QueryError::new(0, "", ""))?;
        assert_eq!(sort.key_field, Some(8));
        assert!(sort.descending);
        assert_eq!(sort.sql, "SELECT l.id FROM leads l");
        assert_eq!(
            u(r#"("custom.Next Call Date" < now or "custom.Next Call Date":"")"#)?,
            None
        );
        assert_eq!(
            u(r#"custom."Next Call Date" < now sort:"Next Call Date""#)?,
            None
        );
        let other = u(r#"custom."Lead Source":x lead_status:a sort:"Next Call Date""#)?
            .ok_or_else(|| QueryError::new(0, "", ""))?;
        assert_eq!(other.key_field, Some(8));
        assert!(!other.descending);
        assert!(
            other.sql.starts_with("SELECT l.id FROM leads l LEFT JOIN"),
            "{}",
            other.sql
        );
        assert_eq!(
            other.sql.matches('$').count(),
            other.params.len(),
            "{}",
            other.sql
        );
        Ok(())
    }

    /// Keys read in key order: ties and keyless leads by id, leads with a
    /// key outside the view dropped.
    #[test]
    fn order_by_keys_is_the_order_by() {
        let ids = vec![5, 1, 3, 2, 4, 6];
        let keyed = vec![(4, 30), (3, 20), (1, 20), (7, 10), (6, 5), (2, 5)];
        assert_eq!(order_by_keys(ids, keyed), vec![4, 1, 3, 2, 6, 5]);
        assert_eq!(order_by_keys(vec![2, 1], Vec::new()), vec![1, 2]);
        assert_eq!(order_by_keys(Vec::new(), vec![(1, 1)]), Vec::<i64>::new());
    }

    /// Dense ids as bits, sparse ones hashed: the same answers.
    #[test]
    fn id_sets_hold_their_ids() {
        for ids in [
            vec![3, 1, 2, 200, 64, 65, 127, 128],
            vec![i64::MIN, -5, 0, i64::MAX],
            vec![7],
        ] {
            let mut set = IdSet::new(&ids);
            let dense = matches!(set, IdSet::Bits { .. });
            assert_eq!(dense, !ids.contains(&i64::MAX), "{ids:?}");
            for probe in [i64::MIN, -6, -5, 0, 1, 4, 63, 64, 129, 200, 201, i64::MAX] {
                assert_eq!(
                    set.contains(probe),
                    ids.contains(&probe),
                    "{probe} in {ids:?}"
                );
            }
            for &id in &ids {
                assert!(set.remove(id));
                assert!(!set.remove(id));
                assert!(!set.contains(id));
            }
        }
        assert!(!IdSet::new(&[]).contains(0));
    }

    /// Top-level conditions on one custom field that a missing value
    /// satisfies are split off as the leads failing them; the rest of the
    /// view compiles on its own.
    #[test]
    fn conditions_missing_values_satisfy_are_excluded() -> Result<(), QueryError> {
        let none = QueryError::new(0, "", "");
        let q = compiled(
            r#"("custom.Next Call Date" < now or "custom.Next Call Date":"")"#,
            Dialect::Postgres,
        )?;
        let e = q.excluding.ok_or(none.clone())?;
        assert_eq!(
            e.rest.sql,
            "SELECT l.id FROM leads l ORDER BY l.created_ms ASC, l.id ASC"
        );
        assert_eq!(e.rest.excluding, None);
        assert_eq!(e.failing.len(), 1);
        let f = &e.failing[0];
        // The negation written out: a range of `lcv_ms`.
        assert_eq!(
            f.sql,
            "SELECT cv.lead_id AS id FROM lead_custom_values cv WHERE cv.field_id = $1 \
             AND cv.value_ms IS NOT NULL AND ((cv.value_ms >= $2) AND TRUE)"
        );
        assert_eq!(
            f.params,
            vec![SqlParam::Int(8), SqlParam::Int(now().timestamp_millis())]
        );
        // The rest keeps the other conditions and the sort.
        let q = compiled(
            r#"lead_status:a not custom."Lead Source":x custom."Next Call Date":"" sort:-created"#,
            Dialect::Sqlite,
        )?;
        let e = q.excluding.ok_or(none)?;
        assert_eq!(e.failing.len(), 2);
        assert!(
            e.rest.sql.contains("lower(l.status) = lower(?)"),
            "{}",
            e.rest.sql
        );
        assert!(!e.rest.sql.contains("lead_custom_values"), "{}", e.rest.sql);
        assert!(e
            .rest
            .sql
            .ends_with("ORDER BY l.created_ms DESC NULLS LAST, l.id ASC"));
        assert_eq!(e.rest.params, vec![SqlParam::Text("a".into())]);
        // Not split: a missing value fails it, it names a lead field too,
        // it is not a top-level condition, or the query is a page.
        for q in [
            r#"custom."Lead Source":x"#,
            r#"custom."Lead Source" in (x, y)"#,
            r#"not custom."Lead Source" in (x, "")"#,
            r#"custom."Lead Source":"" or lead_status:a"#,
            r#"lead_status:a (custom."Lead Source":"" or custom."Next Call Date":"")"#,
        ] {
            assert_eq!(compiled(q, Dialect::Sqlite)?.excluding, None, "{q}");
        }
        let page = compiled(r#"not custom."Lead Source":x"#, Dialect::Postgres)?.page(5, 0);
        assert_eq!(page.excluding, None);
        Ok(())
    }

    /// `opportunities op N` as `EXISTS` tests selects exactly the leads
    /// whose count satisfies the comparison, for every operator and N.
    #[tokio::test]
    async fn opportunity_count_forms_match_counting() -> Result<(), Box<dyn std::error::Error>> {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        // Lead i has i - 1 opportunities (0 to 4).
        for lead in 1..=5i64 {
            sqlx::query(
                "INSERT INTO leads (id, name, status, created_ms, updated_ms) VALUES (?, 'x', '', ?, 0)",
            )
            .bind(lead)
            .bind(lead)
            .execute(&pool)
            .await?;
            for _ in 1..lead {
                sqlx::query(
                    "INSERT INTO opportunities (lead_id, status_type, created_ms) VALUES (?, 'Won', 0)",
                )
                .bind(lead)
                .execute(&pool)
                .await?;
            }
        }
        type Holds = fn(i64, i64) -> bool;
        let ops: [(&str, Holds); 5] = [
            (":", |c, n| c == n),
            ("<", |c, n| c < n),
            (">", |c, n| c > n),
            ("<=", |c, n| c <= n),
            (">=", |c, n| c >= n),
        ];
        for (op, holds) in ops {
            for n in [-1i64, 0, 1, 2, 3, 4, 5, i64::MAX] {
                for negated in [false, true] {
                    let text = format!(
                        "{}opportunities{op}\"{n}\"",
                        if negated { "not " } else { "" }
                    );
                    let q = compiled(&text, Dialect::Sqlite)?;
                    let got = fetch_ids_sqlite(&pool, &q).await?;
                    let want: Vec<i64> = (1..=5)
                        .filter(|lead| holds(lead - 1, n) != negated)
                        .collect();
                    assert_eq!(got, want, "{text}: {}", q.sql);
                }
            }
        }
        let q = compiled("sort:-opportunities", Dialect::Sqlite)?;
        assert_eq!(fetch_ids_sqlite(&pool, &q).await?, vec![5, 4, 3, 2, 1]);
        Ok(())
    }

    #[test]
    fn type_errors_name_the_position() {
        let err = |q: &str| compiled(q, Dialect::Sqlite).err().map(|e| e.position);
        assert_eq!(err(r#"opportunities:"abc""#), Some(14));
        assert_eq!(err("name < b"), Some(5));
        assert_eq!(err("lead_status:a custom.Nope:1"), Some(14));
        assert_eq!(err(r#"created:"5 days ago""#), Some(7));
        assert_eq!(err(r#"created < "yesterday""#), Some(10));
        assert_eq!(err("opportunity(status_type:Pending)"), Some(24));
        assert_eq!(err("opportunities:1.5"), Some(14));
        assert_eq!(err("sort:Nope"), Some(5));
        assert_eq!(err("sort:-\"Nope\""), Some(6));
    }
}
