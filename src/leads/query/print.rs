//! Canonical query text (SPEC §3): what a Smart View's query is saved and
//! shown as. `parse(print(q)) == q` for every tree the parser can produce.
//!
//! Canonical form: terms side by side for `and`, ` or ` between
//! alternatives, parentheses only where precedence needs them, every text
//! value quoted, custom fields as `custom."NAME"`, sort terms last.

use std::fmt::Write;

use super::ast::{
    Cond, Expr, LeadField, LeadTerm, OpportunityField, Query, Test, Value, ValueKind,
};

/// Prints `query` as canonical text that parses back to the same tree (SPEC §3).
pub fn print(query: &Query) -> String {
    let mut out = String::new();
    if let Some(filter) = &query.filter {
        print_expr(filter, Context::Top, &mut out);
    }
    for sort in &query.sorts {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("sort:");
        if sort.descending {
            out.push('-');
        }
        print_lead_field(&sort.field, &mut out);
    }
    out
}

/// Quotes `text` as a query string literal, escaping `"`, `\` and line breaks.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Where an expression is printed, which decides whether it needs parentheses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    Top,
    OrOperand,
    AndOperand,
    NotOperand,
}

trait PrintLeaf {
    fn print_leaf(&self, out: &mut String);
}

fn print_expr<T: PrintLeaf>(expr: &Expr<T>, ctx: Context, out: &mut String) {
    let parens = match expr {
        Expr::Or(_) => ctx != Context::Top,
        Expr::And(_) => matches!(ctx, Context::AndOperand | Context::NotOperand),
        Expr::Not(_) | Expr::Term(_) => false,
    };
    if parens {
        out.push('(');
    }
    match expr {
        Expr::Or(items) => join(items, " or ", Context::OrOperand, out),
        Expr::And(items) => join(items, " ", Context::AndOperand, out),
        Expr::Not(inner) => {
            out.push_str("not ");
            print_expr(inner, Context::NotOperand, out);
        }
        Expr::Term(t) => t.print_leaf(out),
    }
    if parens {
        out.push(')');
    }
}

fn join<T: PrintLeaf>(items: &[Expr<T>], sep: &str, ctx: Context, out: &mut String) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        print_expr(item, ctx, out);
    }
}

fn print_lead_field(field: &LeadField, out: &mut String) {
    match field {
        LeadField::Custom(name) => {
            out.push_str("custom.");
            out.push_str(&quote(name));
        }
        builtin => out.push_str(builtin.builtin_name().unwrap_or_default()),
    }
}

fn print_value(value: &Value, out: &mut String) {
    match &value.kind {
        ValueKind::Text(t) => out.push_str(&quote(t)),
        ValueKind::Now => out.push_str("now"),
        ValueKind::Ago(age) => {
            let plural = if age.amount == 1 { "" } else { "s" };
            let _ = write!(
                out,
                "\"{} {}{} ago\"",
                age.amount,
                age.unit.singular(),
                plural
            );
        }
    }
}

fn print_test(test: &Test, out: &mut String) {
    match test {
        Test::Compare { op, value, .. } => {
            if *op == super::ast::CompareOp::Eq {
                out.push(':');
            } else {
                out.push(' ');
                out.push_str(op.symbol());
                out.push(' ');
            }
            print_value(value, out);
        }
        Test::In { negated, values } => {
            out.push_str(if *negated { " not in (" } else { " in (" });
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                print_value(v, out);
            }
            out.push(')');
        }
    }
}

impl PrintLeaf for LeadTerm {
    fn print_leaf(&self, out: &mut String) {
        match self {
            LeadTerm::Cond(cond) => {
                print_lead_field(&cond.field, out);
                print_test(&cond.test, out);
            }
            LeadTerm::Opportunity(inner, _) => {
                out.push_str("opportunity(");
                print_expr(inner, Context::Top, out);
                out.push(')');
            }
        }
    }
}

impl PrintLeaf for Cond<OpportunityField> {
    fn print_leaf(&self, out: &mut String) {
        out.push_str(self.field.name());
        print_test(&self.test, out);
    }
}
