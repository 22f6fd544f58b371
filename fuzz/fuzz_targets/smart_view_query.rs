//! Smart View queries as users type them (SPEC §3): parsing; what parses
//! prints back into the same query, and compiles to SQL for both
//! databases.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use powerdial::leads::query::{compile, parse, print, CustomFieldCatalog, Dialect};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(query) = parse(text) else {
        return;
    };
    let printed = print(&query);
    let again = parse(&printed).unwrap_or_else(|e| panic!("{printed:?} does not parse: {e}"));
    assert_eq!(again, query, "printing changed the query: {printed:?}");
    let now = Utc
        .timestamp_opt(1_700_000_000, 0)
        .single()
        .expect("literal");
    let fields = CustomFieldCatalog::new();
    let _ = compile(&query, Dialect::Sqlite, now, &fields);
    let _ = compile(&query, Dialect::Postgres, now, &fields);
});
