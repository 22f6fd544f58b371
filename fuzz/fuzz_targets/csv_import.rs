//! Lead CSV files as users upload them (SPEC §3 import): header mapping,
//! quoting, row validation and phone numbers. Every row becomes a lead or
//! a failure with its line; nothing panics.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use powerdial::leads::import::parse_rows;
use powerdial::leads::model::{CustomField, CustomFieldKind, CustomFieldSet};

fn field(id: i64, name: &str, kind: CustomFieldKind, choices: &[&str]) -> CustomField {
    CustomField {
        id,
        name: name.into(),
        kind,
        choices: choices.iter().map(|c| c.to_string()).collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    let now = Utc
        .timestamp_opt(1_700_000_000, 0)
        .single()
        .expect("literal");
    // The custom fields of the example file, one of each kind.
    let fields = CustomFieldSet::new(vec![
        field(1, "Lead Source", CustomFieldKind::Text, &[]),
        field(2, "Next Call Date", CustomFieldKind::Date, &[]),
        field(3, "Seats", CustomFieldKind::Number, &[]),
        field(4, "Renewal", CustomFieldKind::Datetime, &[]),
        field(5, "Tier", CustomFieldKind::Choices, &["Gold", "Silver"]),
    ]);
    let mut last_line = 0u64;
    let _ = parse_rows(data, &fields, "US", now, |row| {
        let line = match &row {
            Ok((line, _)) => *line,
            Err(f) => f.line,
        };
        // Non-decreasing: a bare CR ends a record too (as in the csv
        // crate and spreadsheets), and lines are counted by LF, so two
        // records can share a line number; never an earlier one.
        assert!(
            line >= last_line,
            "rows out of order: {line} after {last_line}"
        );
        last_line = line;
        true
    });
});
