//! Recursive-descent parser for Smart View queries (SPEC §3).
//!
//! Grammar (keywords case-insensitive; `not` binds tightest, then `and` and
//! juxtaposition, then `or`):
//!
//! ```text
//! query   = or
//! or      = and { "or" and }
//! and     = unary { ["and"] unary }
//! unary   = "not" unary | primary
//! primary = "(" or ")" | sort | "opportunity" "(" or ")" | field test
//! test    = (":" | "<" | ">" | "<=" | ">=") value
//!         | ["not"] "in" "(" value { "," value } ")"
//! value   = WORD | "now" | STRING            (a STRING "N units ago" is an age)
//! field   = builtin | custom.WORD | custom.STRING | "custom.NAME"
//! sort    = "sort" ":" ["-"] (field | WORD | STRING)
//! ```
//!
//! Sort terms are directives, not conditions: they may stand anywhere outside
//! parentheses and `not`, and are lifted out of the filter.

use super::ast::{
    Age, CompareOp, Cond, Expr, LeadField, LeadTerm, OpportunityField, Pos, Query, Sort, Test,
    Value, ValueKind,
};
use super::lexer::{tokenize, Token, TokenKind};
use super::print::quote;
use super::QueryError;

/// Parses a Smart View query (SPEC §3) into its canonical tree.
///
/// An empty query, or one with only sort terms, has no filter.
pub fn parse(input: &str) -> Result<Query, QueryError> {
    let mut p = Parser {
        tokens: tokenize(input)?,
        at: 0,
        len: input.chars().count(),
        sorts: Vec::new(),
        depth: 0,
    };
    let filter = p.parse_or::<LeadTerm>(true)?;
    if let Some(tok) = p.peek() {
        return Err(QueryError::new(
            tok.start,
            "a condition or the end of the query",
            describe(Some(tok)),
        ));
    }
    Ok(Query {
        filter,
        sorts: p.sorts,
    })
}

const LEAD_FIELDS: &str = "a field (lead_status, name, created, updated, called, \
latest_call_created, opportunities, opportunity(...), custom.NAME)";

/// How a token reads in an error message.
fn describe(tok: Option<&Token>) -> String {
    match tok.map(|t| &t.kind) {
        None => "end of query".to_string(),
        Some(TokenKind::LParen) => "'('".to_string(),
        Some(TokenKind::RParen) => "')'".to_string(),
        Some(TokenKind::Comma) => "','".to_string(),
        Some(TokenKind::Colon) => "':'".to_string(),
        Some(TokenKind::Lt) => "'<'".to_string(),
        Some(TokenKind::Gt) => "'>'".to_string(),
        Some(TokenKind::Le) => "'<='".to_string(),
        Some(TokenKind::Ge) => "'>='".to_string(),
        Some(TokenKind::Word(w)) => format!("'{w}'"),
        Some(TokenKind::Str(s)) => quote(s),
    }
}

/// A kind of term the boolean grammar is built over: lead terms at the top,
/// opportunity conditions inside `opportunity(...)`.
trait Leaf: Sized {
    fn parse_leaf(p: &mut Parser) -> Result<Self, QueryError>;
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    /// Length of the input in chars: the position of "end of query".
    len: usize,
    sorts: Vec<Sort>,
    /// Open parentheses and `not`s around the current token.
    depth: usize,
}

/// How deeply parentheses, `not` and `opportunity(...)` may nest: the parser,
/// printer and compiler recurse, and a user's query must not exhaust the stack.
pub const MAX_DEPTH: usize = 64;

fn and_of<T>(items: Vec<Expr<T>>) -> Option<Expr<T>> {
    let mut flat = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Expr::And(inner) => flat.extend(inner),
            other => flat.push(other),
        }
    }
    if flat.len() > 1 {
        Some(Expr::And(flat))
    } else {
        flat.pop()
    }
}

fn or_of<T>(items: Vec<Expr<T>>) -> Option<Expr<T>> {
    let mut flat = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Expr::Or(inner) => flat.extend(inner),
            other => flat.push(other),
        }
    }
    if flat.len() > 1 {
        Some(Expr::Or(flat))
    } else {
        flat.pop()
    }
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn peek_at(&self, ahead: usize) -> Option<&Token> {
        self.tokens.get(self.at + ahead)
    }

    fn next(&mut self) -> Option<Token> {
        let tok = self.tokens.get(self.at).cloned();
        if tok.is_some() {
            self.at += 1;
        }
        tok
    }

    /// Position of the next token, or the end of the query.
    fn here(&self) -> usize {
        self.peek().map_or(self.len, |t| t.start)
    }

    fn error_here(&self, expected: impl Into<String>) -> QueryError {
        QueryError::new(self.here(), expected, describe(self.peek()))
    }

    /// Enters one more level of nesting, refusing to go past `MAX_DEPTH`.
    fn enter(&mut self) -> Result<(), QueryError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_here(format!(
                "at most {MAX_DEPTH} nested parentheses, 'not's and opportunity(...)"
            )));
        }
        Ok(())
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        self.peek_keyword_at(0, keyword)
    }

    fn peek_keyword_at(&self, ahead: usize, keyword: &str) -> bool {
        matches!(self.peek_at(ahead), Some(Token { kind: TokenKind::Word(w), .. })
            if w.eq_ignore_ascii_case(keyword))
    }

    fn peek_is(&self, kind: &TokenKind) -> bool {
        self.peek().is_some_and(|t| &t.kind == kind)
    }

    fn expect(&mut self, kind: TokenKind, expected: &str) -> Result<Token, QueryError> {
        if self.peek_is(&kind) {
            self.next().ok_or_else(|| self.error_here(expected))
        } else {
            Err(self.error_here(expected))
        }
    }

    fn parse_or<T: Leaf>(&mut self, sort_ok: bool) -> Result<Option<Expr<T>>, QueryError> {
        let first = self.parse_and::<T>(sort_ok)?;
        if !self.peek_keyword("or") {
            return Ok(first);
        }
        let Some(first) = first else {
            return Err(self.error_here("a condition before 'or'"));
        };
        let mut items = vec![first];
        while self.peek_keyword("or") {
            self.next();
            let start = self.here();
            let found = describe(self.peek());
            match self.parse_and::<T>(sort_ok)? {
                Some(e) => items.push(e),
                None => return Err(QueryError::new(start, "a condition after 'or'", found)),
            }
        }
        Ok(or_of(items))
    }

    /// An and-chain; `None` when it held only sort terms (or nothing).
    fn parse_and<T: Leaf>(&mut self, sort_ok: bool) -> Result<Option<Expr<T>>, QueryError> {
        let mut items = Vec::new();
        let mut any = false;
        loop {
            match self.peek() {
                None => break,
                Some(Token {
                    kind: TokenKind::RParen,
                    ..
                }) => break,
                Some(_) if self.peek_keyword("or") => break,
                Some(_) if self.peek_keyword("and") => {
                    if !any {
                        return Err(self.error_here("a condition before 'and'"));
                    }
                    self.next();
                    let ends = self.peek().is_none()
                        || self.peek_is(&TokenKind::RParen)
                        || self.peek_keyword("or")
                        || self.peek_keyword("and");
                    if ends {
                        return Err(self.error_here("a condition after 'and'"));
                    }
                }
                Some(_) => {
                    if let Some(e) = self.parse_unary::<T>(sort_ok)? {
                        items.push(e);
                    }
                    any = true;
                }
            }
        }
        Ok(and_of(items))
    }

    /// A unary term; `None` when it was a sort term (lifted into `self.sorts`).
    fn parse_unary<T: Leaf>(&mut self, sort_ok: bool) -> Result<Option<Expr<T>>, QueryError> {
        if self.peek_keyword("not") {
            self.enter()?;
            self.next();
            let start = self.here();
            let found = describe(self.peek());
            let ends = self.peek().is_none()
                || self.peek_is(&TokenKind::RParen)
                || self.peek_keyword("or")
                || self.peek_keyword("and");
            if ends {
                return Err(QueryError::new(start, "a condition after 'not'", found));
            }
            let inner = self.parse_unary::<T>(false)?;
            self.depth -= 1;
            return match inner {
                Some(e) => Ok(Some(Expr::Not(Box::new(e)))),
                None => Err(QueryError::new(start, "a condition after 'not'", found)),
            };
        }
        self.parse_primary(sort_ok)
    }

    fn parse_primary<T: Leaf>(&mut self, sort_ok: bool) -> Result<Option<Expr<T>>, QueryError> {
        if self.peek_is(&TokenKind::LParen) {
            self.enter()?;
            self.next();
            let inner = self.parse_or::<T>(false)?;
            let Some(inner) = inner else {
                return Err(self.error_here("a condition inside '(...)'"));
            };
            self.expect(TokenKind::RParen, "')' or another condition")?;
            self.depth -= 1;
            return Ok(Some(inner));
        }
        if self.peek_keyword("sort") && self.peek_at(1).is_some_and(|t| t.kind == TokenKind::Colon)
        {
            if !sort_ok {
                return Err(self.error_here(
                    "a condition (sort: is only allowed outside parentheses, 'not' and opportunity(...))",
                ));
            }
            self.next();
            self.next();
            let sort = self.parse_sort()?;
            self.sorts.push(sort);
            return Ok(None);
        }
        match self.peek() {
            Some(Token {
                kind: TokenKind::Word(_) | TokenKind::Str(_),
                ..
            }) => Ok(Some(Expr::Term(T::parse_leaf(self)?))),
            _ => Err(self.error_here("a condition")),
        }
    }

    /// After `sort:`: `[-]NAME`, where an unknown name is a custom field.
    fn parse_sort(&mut self) -> Result<Sort, QueryError> {
        let Some(tok) = self.next() else {
            return Err(self.error_here("a field to sort by after 'sort:'"));
        };
        match tok.kind {
            TokenKind::Word(w) => {
                let (descending, name, name_pos) = match w.strip_prefix('-') {
                    Some(rest) => (true, rest.to_string(), tok.start + 1),
                    None => (false, w, tok.start),
                };
                let field = if name.is_empty() {
                    match self.peek() {
                        Some(Token {
                            kind: TokenKind::Str(s),
                            start,
                            ..
                        }) if *start == tok.end => {
                            let (s, at) = (s.clone(), *start);
                            self.next();
                            sort_field_from_name(&s).ok_or_else(|| empty_sort_name(at))?
                        }
                        _ => return Err(self.error_here("a field to sort by after '-'")),
                    }
                } else {
                    match self.custom_suffix(&name, tok.end)? {
                        Some(custom) => custom,
                        None => {
                            sort_field_from_name(&name).ok_or_else(|| empty_sort_name(tok.start))?
                        }
                    }
                };
                Ok(Sort {
                    field,
                    descending,
                    pos: Pos(name_pos),
                })
            }
            TokenKind::Str(s) => Ok(Sort {
                field: sort_field_from_name(&s).ok_or_else(|| empty_sort_name(tok.start))?,
                descending: false,
                pos: Pos(tok.start),
            }),
            _ => Err(QueryError::new(
                tok.start,
                "a field to sort by after 'sort:'",
                describe(Some(&tok)),
            )),
        }
    }

    /// For a word starting `custom.`: the custom field it names (taking the
    /// adjacent quoted name for `custom."Lead Source"`); `None` for other words.
    fn custom_suffix(
        &mut self,
        word: &str,
        word_end: usize,
    ) -> Result<Option<LeadField>, QueryError> {
        let Some(rest) = strip_custom(word) else {
            return Ok(None);
        };
        if !rest.is_empty() {
            return Ok(Some(LeadField::Custom(rest.to_string())));
        }
        match self.peek() {
            Some(Token {
                kind: TokenKind::Str(s),
                start,
                ..
            }) if *start == word_end && !s.is_empty() => {
                let name = s.clone();
                self.next();
                Ok(Some(LeadField::Custom(name)))
            }
            _ => Err(QueryError::new(
                word_end,
                "a custom field name right after 'custom.'",
                describe(self.peek()),
            )),
        }
    }

    /// After a field: its test.
    fn parse_test(&mut self) -> Result<Test, QueryError> {
        let op = match self.peek().map(|t| &t.kind) {
            Some(TokenKind::Colon) => Some(CompareOp::Eq),
            Some(TokenKind::Lt) => Some(CompareOp::Lt),
            Some(TokenKind::Gt) => Some(CompareOp::Gt),
            Some(TokenKind::Le) => Some(CompareOp::Le),
            Some(TokenKind::Ge) => Some(CompareOp::Ge),
            _ => None,
        };
        if let Some(op) = op {
            let op_pos = Pos(self.here());
            self.next();
            let value = self.parse_value(&format!("a value after '{}'", op.symbol()))?;
            return Ok(Test::Compare { op, op_pos, value });
        }
        let negated = self.peek_keyword("not") && self.peek_keyword_at(1, "in");
        if negated || self.peek_keyword("in") {
            self.next();
            if negated {
                self.next();
            }
            self.expect(TokenKind::LParen, "'(' after 'in'")?;
            let mut values = vec![self.parse_value("a value in the list")?];
            loop {
                match self.next() {
                    Some(Token {
                        kind: TokenKind::Comma,
                        ..
                    }) => values.push(self.parse_value("a value after ','")?),
                    Some(Token {
                        kind: TokenKind::RParen,
                        ..
                    }) => break,
                    other => {
                        let pos = other.as_ref().map_or(self.len, |t| t.start);
                        return Err(QueryError::new(pos, "',' or ')'", describe(other.as_ref())));
                    }
                }
            }
            return Ok(Test::In { negated, values });
        }
        Err(self.error_here("':', '<', '>', '<=', '>=', 'in' or 'not in' after the field"))
    }

    fn parse_value(&mut self, expected: &str) -> Result<Value, QueryError> {
        let kind = match self.peek().map(|t| &t.kind) {
            Some(TokenKind::Word(w)) if w.eq_ignore_ascii_case("now") => ValueKind::Now,
            Some(TokenKind::Word(w)) => ValueKind::Text(w.clone()),
            Some(TokenKind::Str(s)) => match Age::parse(s) {
                Some(age) => ValueKind::Ago(age),
                None => ValueKind::Text(s.clone()),
            },
            _ => return Err(self.error_here(expected)),
        };
        let pos = Pos(self.here());
        self.next();
        Ok(Value { kind, pos })
    }
}

/// `custom.` prefix, case-insensitive; the rest keeps its case.
fn strip_custom(name: &str) -> Option<&str> {
    let prefix = name.get(..7)?;
    if prefix.eq_ignore_ascii_case("custom.") {
        name.get(7..)
    } else {
        None
    }
}

/// A sort field by name: built-in, `custom.NAME`, or else a custom field
/// named without `custom.` (SPEC §3: `sort:-"Next Call Date"`). `None` for
/// an empty name (`sort:""`, `sort:"custom."`): no field has one.
fn sort_field_from_name(name: &str) -> Option<LeadField> {
    if let Some(rest) = strip_custom(name) {
        return (!rest.is_empty()).then(|| LeadField::Custom(rest.to_string()));
    }
    if name.is_empty() {
        return None;
    }
    Some(LeadField::builtin(name).unwrap_or_else(|| LeadField::Custom(name.to_string())))
}

/// The error for `sort:""` and `sort:"custom."`.
fn empty_sort_name(at: usize) -> QueryError {
    QueryError::new(at, "a field name to sort by", "an empty name".to_string())
}

impl Leaf for LeadTerm {
    fn parse_leaf(p: &mut Parser) -> Result<Self, QueryError> {
        let Some(tok) = p.next() else {
            return Err(p.error_here(LEAD_FIELDS));
        };
        let field = match &tok.kind {
            TokenKind::Word(w) if w.eq_ignore_ascii_case("opportunity") => {
                if !p.peek_is(&TokenKind::LParen) {
                    return Err(p.error_here("'(' after 'opportunity'"));
                }
                p.enter()?;
                p.next();
                let inner = p.parse_or::<Cond<OpportunityField>>(false)?;
                let Some(inner) = inner else {
                    return Err(p.error_here("a condition inside opportunity(...)"));
                };
                p.expect(TokenKind::RParen, "')' or another opportunity condition")?;
                p.depth -= 1;
                return Ok(LeadTerm::Opportunity(inner, Pos(tok.start)));
            }
            TokenKind::Word(w) => match p.custom_suffix(w, tok.end)? {
                Some(custom) => custom,
                None => LeadField::builtin(w)
                    .ok_or_else(|| QueryError::new(tok.start, LEAD_FIELDS, describe(Some(&tok))))?,
            },
            TokenKind::Str(s) => match strip_custom(s).filter(|r| !r.is_empty()) {
                Some(rest) => LeadField::Custom(rest.to_string()),
                None => {
                    return Err(QueryError::new(
                        tok.start,
                        LEAD_FIELDS,
                        describe(Some(&tok)),
                    ))
                }
            },
            _ => {
                return Err(QueryError::new(
                    tok.start,
                    LEAD_FIELDS,
                    describe(Some(&tok)),
                ))
            }
        };
        let test = p.parse_test()?;
        Ok(LeadTerm::Cond(Cond {
            field,
            pos: Pos(tok.start),
            test,
        }))
    }
}

impl Leaf for Cond<OpportunityField> {
    fn parse_leaf(p: &mut Parser) -> Result<Self, QueryError> {
        const EXPECTED: &str = "an opportunity field (created, status_type, value)";
        let Some(tok) = p.next() else {
            return Err(p.error_here(EXPECTED));
        };
        let field = match &tok.kind {
            TokenKind::Word(w) => OpportunityField::from_name(w),
            _ => None,
        }
        .ok_or_else(|| QueryError::new(tok.start, EXPECTED, describe(Some(&tok))))?;
        let test = p.parse_test()?;
        Ok(Cond {
            field,
            pos: Pos(tok.start),
            test,
        })
    }
}
