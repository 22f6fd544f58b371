//! The Smart View query tree (SPEC §3).
//!
//! The parser produces a *canonical* tree: `And`/`Or` hold at least two
//! operands and never an operand of their own kind (`a (b c)` and `a b c`
//! mean the same and give the same tree), so printing a tree and parsing it
//! back yields the same tree (DESIGN.md "print∘parse = id").

/// A char offset into the query text, kept on the tree for error messages.
///
/// Positions are metadata, not meaning: two trees that differ only in
/// positions compare equal (as syn ignores spans), which is what lets a
/// printed-and-reparsed tree equal the original (SPEC §3).
#[derive(Debug, Clone, Copy, Default)]
pub struct Pos(pub usize);

impl PartialEq for Pos {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for Pos {}

/// A whole Smart View query: an optional filter and its sort keys (SPEC §3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    /// The lead filter; `None` (an empty or sort-only query) matches every lead.
    pub filter: Option<Expr<LeadTerm>>,
    /// Sort keys in priority order; empty means `created` ascending (SPEC §3).
    pub sorts: Vec<Sort>,
}

/// A boolean combination of terms (SPEC §3: juxtaposition and `and`, `or`, `not`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr<T> {
    /// All operands hold; at least two, none an `And` itself.
    And(Vec<Expr<T>>),
    /// Some operand holds; at least two, none an `Or` itself.
    Or(Vec<Expr<T>>),
    /// The operand does not hold.
    Not(Box<Expr<T>>),
    /// A single term.
    Term(T),
}

/// A term over a lead (SPEC §3 "Fields").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadTerm {
    /// A condition on one of the lead's own fields.
    Cond(Cond<LeadField>),
    /// `opportunity(...)`: some opportunity of the lead satisfies the inner terms.
    Opportunity(Expr<Cond<OpportunityField>>, Pos),
}

/// The fields of a lead a query can test or sort by (SPEC §3 "Fields").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeadField {
    /// `lead_status`: text.
    Status,
    /// `name`: text.
    Name,
    /// `created`: timestamp.
    Created,
    /// `updated`: timestamp.
    Updated,
    /// `called`: the latest call's start; a never-called lead has no value.
    Called,
    /// `latest_call_created`: the latest call's start; a never-called lead
    /// counts as infinitely old (SPEC §3: it matches `> "5 days ago"`).
    LatestCallCreated,
    /// `opportunities`: the number of opportunities.
    Opportunities,
    /// `custom.NAME`: a typed custom field, named as written.
    Custom(String),
}

impl LeadField {
    /// The built-in field named `name` (case-insensitive), if any.
    pub fn builtin(name: &str) -> Option<LeadField> {
        Some(match name.to_ascii_lowercase().as_str() {
            "lead_status" => LeadField::Status,
            "name" => LeadField::Name,
            "created" => LeadField::Created,
            "updated" => LeadField::Updated,
            "called" => LeadField::Called,
            "latest_call_created" => LeadField::LatestCallCreated,
            "opportunities" => LeadField::Opportunities,
            _ => return None,
        })
    }

    /// The built-in field's name as the query language spells it; `None` for
    /// custom fields, which are printed as `custom."NAME"`.
    pub fn builtin_name(&self) -> Option<&'static str> {
        Some(match self {
            LeadField::Status => "lead_status",
            LeadField::Name => "name",
            LeadField::Created => "created",
            LeadField::Updated => "updated",
            LeadField::Called => "called",
            LeadField::LatestCallCreated => "latest_call_created",
            LeadField::Opportunities => "opportunities",
            LeadField::Custom(_) => return None,
        })
    }
}

/// The fields of an opportunity usable inside `opportunity(...)` (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpportunityField {
    /// `created`: timestamp.
    Created,
    /// `status_type`: one of Active, Won, Lost.
    StatusType,
    /// `value`: number, may be missing.
    Value,
}

impl OpportunityField {
    /// The field named `name` (case-insensitive), if any.
    pub fn from_name(name: &str) -> Option<OpportunityField> {
        Some(match name.to_ascii_lowercase().as_str() {
            "created" => OpportunityField::Created,
            "status_type" => OpportunityField::StatusType,
            "value" => OpportunityField::Value,
            _ => return None,
        })
    }

    /// The field's name as the query language spells it.
    pub fn name(self) -> &'static str {
        match self {
            OpportunityField::Created => "created",
            OpportunityField::StatusType => "status_type",
            OpportunityField::Value => "value",
        }
    }
}

/// One condition: a field and the test applied to it (SPEC §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond<F> {
    /// The field tested.
    pub field: F,
    /// Where the field's name starts.
    pub pos: Pos,
    /// What is tested.
    pub test: Test,
}

/// The test a condition applies to its field (SPEC §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    /// `field:value`, `field < value`, ...
    Compare {
        /// The operator.
        op: CompareOp,
        /// Where the operator starts.
        op_pos: Pos,
        /// The right-hand side.
        value: Value,
    },
    /// `field in (...)` or, when `negated`, `field not in (...)`; never empty.
    In {
        /// `not in`.
        negated: bool,
        /// The listed values.
        values: Vec<Value>,
    },
}

/// A comparison operator (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    /// `:` equality (case-insensitive for text; `:""` is "empty or missing").
    Eq,
    /// `<`
    Lt,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `>=`
    Ge,
}

impl CompareOp {
    /// The operator as written in a query.
    pub fn symbol(self) -> &'static str {
        match self {
            CompareOp::Eq => ":",
            CompareOp::Lt => "<",
            CompareOp::Gt => ">",
            CompareOp::Le => "<=",
            CompareOp::Ge => ">=",
        }
    }
}

/// A value on the right of an operator, with where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// What the value is.
    pub kind: ValueKind,
    /// Where it starts in the query text.
    pub pos: Pos,
}

impl Value {
    /// A value at position 0, for building trees in code.
    pub fn new(kind: ValueKind) -> Value {
        Value { kind, pos: Pos(0) }
    }
}

/// The lexical kinds of value; the compiler interprets text by the field's
/// type (number, date, text), see `sql.rs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    /// A bare word or quoted string that is not an age phrase.
    Text(String),
    /// The bare word `now`: the current instant (SPEC §3).
    Now,
    /// A quoted `"N units ago"` phrase: an age (SPEC §3).
    Ago(Age),
}

/// An age phrase `"N units ago"` (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Age {
    /// N.
    pub amount: u32,
    /// The unit.
    pub unit: AgeUnit,
}

/// The units of an age phrase; months and years are calendar units (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgeUnit {
    /// seconds
    Second,
    /// minutes
    Minute,
    /// hours
    Hour,
    /// days (24 h)
    Day,
    /// weeks (7 days)
    Week,
    /// calendar months
    Month,
    /// calendar years (12 months)
    Year,
}

impl AgeUnit {
    /// All units, for generators and docs.
    pub const ALL: [AgeUnit; 7] = [
        AgeUnit::Second,
        AgeUnit::Minute,
        AgeUnit::Hour,
        AgeUnit::Day,
        AgeUnit::Week,
        AgeUnit::Month,
        AgeUnit::Year,
    ];

    /// The singular English name.
    pub fn singular(self) -> &'static str {
        match self {
            AgeUnit::Second => "second",
            AgeUnit::Minute => "minute",
            AgeUnit::Hour => "hour",
            AgeUnit::Day => "day",
            AgeUnit::Week => "week",
            AgeUnit::Month => "month",
            AgeUnit::Year => "year",
        }
    }

    /// The unit named `word`, singular or plural, case-insensitive.
    pub fn from_word(word: &str) -> Option<AgeUnit> {
        let lower = word.to_ascii_lowercase();
        let stem = lower.strip_suffix('s').unwrap_or(&lower);
        AgeUnit::ALL.into_iter().find(|u| u.singular() == stem)
    }
}

impl Age {
    /// Reads `"N units ago"` (any spacing, singular or plural, any case).
    pub fn parse(text: &str) -> Option<Age> {
        let mut words = text.split_whitespace();
        let amount = words.next()?;
        let unit = words.next()?;
        let ago = words.next()?;
        if words.next().is_some() || !ago.eq_ignore_ascii_case("ago") {
            return None;
        }
        if !amount.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Age {
            amount: amount.parse().ok()?,
            unit: AgeUnit::from_word(unit)?,
        })
    }
}

/// A sort key: `sort:FIELD` or `sort:-FIELD` (SPEC §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sort {
    /// The field sorted by; an unknown bare name is a custom field.
    pub field: LeadField,
    /// `-FIELD`: descending.
    pub descending: bool,
    /// Where the field's name starts.
    pub pos: Pos,
}
