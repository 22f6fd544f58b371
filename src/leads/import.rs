//! Streaming CSV import of leads (SPEC §4 `powerdial import-leads`,
//! `POST /api/v1/leads/import`).
//!
//! The header row maps columns: `name`, `status`, `contact` /
//! `contact_name`, `phone` / `phones` (several numbers in one cell separated
//! by `;` or `,`) and `phone2`, `phone3`…, `custom.NAME`, `created` (RFC 3339
//! or `YYYY-MM-DD`). An unknown column refuses the whole import before any
//! row is read. Rows are parsed on a blocking thread (RFC 4180 records,
//! quoted fields may span lines) and handed over in batches of
//! [`BATCH_ROWS`], each stored in one transaction; memory stays bounded
//! whatever the file's size. A bad row (bad phone, wrong type, broken
//! quoting, wrong column count) is reported with the line it starts on and
//! does not stop or roll back the others.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

use super::model::{
    parse_time, time_to_ms, Contact, CustomField, CustomFieldSet, ValidLead, ValidationReason,
    MAX_TEXT_LEN,
};
use super::phone::PhoneE164;
use crate::store::{Store, StoreError};

/// Rows stored per transaction.
pub const BATCH_ROWS: usize = 1000;
/// Failures listed in a report; all are counted in `failed_total`.
pub const MAX_REPORTED_FAILURES: usize = 1000;
/// Longest physical line accepted; a longer one fails its row.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Most physical lines one quoted record may span before the quote is
/// taken as unterminated and parsing resumes on the next line.
pub const MAX_RECORD_LINES: usize = 100;

/// Errors that refuse or stop an import (row errors do not: they go in the
/// report).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("cannot read the CSV: {0}")]
    Io(#[from] std::io::Error),
    /// No header row.
    #[error("the CSV is empty: a header row is required")]
    Empty,
    /// The header row itself cannot be parsed.
    #[error("line {line}: the header row is not valid CSV: {reason}")]
    BadHeader {
        /// Its line.
        line: u64,
        /// Why.
        reason: RowError,
    },
    /// A header the import does not know.
    #[error("unknown column {0:?}: expected name, status, contact, contact_name, phone, phones, phoneN, custom.NAME or created")]
    UnknownColumn(String),
    /// A `custom.NAME` column for a field that is not defined.
    #[error("column {0:?}: no custom field of this name is defined")]
    UnknownCustomField(String),
    /// The same column twice.
    #[error("column {0:?} appears twice")]
    DuplicateColumn(String),
    /// No `name` column.
    #[error("a `name` column is required")]
    MissingName,
    /// The database failed (rows of earlier batches stay stored).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why one row was not imported.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    /// A quote in the wrong place, or a quoted field never closed.
    #[error("broken quoting: {0}")]
    BrokenQuoting(&'static str),
    /// Not as many cells as header columns.
    #[error("{got} columns, the header has {expected}")]
    ColumnCount {
        /// Header columns.
        expected: usize,
        /// Cells in the row.
        got: usize,
    },
    /// Bytes that are not UTF-8.
    #[error("not UTF-8 text")]
    NotUtf8,
    /// A line longer than [`MAX_LINE_BYTES`].
    #[error("line longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    /// A cell that fails validation.
    #[error("column {column:?}: {reason}")]
    Invalid {
        /// The header of the offending column.
        column: String,
        /// What is wrong.
        reason: ValidationReason,
    },
    /// The database refused the row on its own (constraint).
    #[error("refused by the database: {0}")]
    Refused(String),
}

impl Serialize for RowError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One row that was not imported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowFailure {
    /// The 1-based line the row starts on (the header is line 1).
    pub line: u64,
    /// Why.
    pub reason: RowError,
}

/// The result of an import.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImportReport {
    /// Leads stored.
    pub imported: u64,
    /// Rows not stored, all of them.
    pub failed_total: u64,
    /// The first [`MAX_REPORTED_FAILURES`] failures, in file order.
    pub failed: Vec<RowFailure>,
}

impl ImportReport {
    fn fail(&mut self, f: RowFailure) {
        self.failed_total += 1;
        if self.failed.len() < MAX_REPORTED_FAILURES {
            self.failed.push(f);
        }
    }
}

/// One CSV record and where it starts.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    line: u64,
    fields: Vec<String>,
}

struct Line {
    number: u64,
    text: String,
    bad: Option<RowError>,
}

enum Parsed {
    Done(Vec<String>, usize),
    NeedMore,
    Broken(RowError),
}

/// RFC 4180 record parsing over buffered physical lines. A quote inside
/// an unquoted field or text after a closing quote is broken quoting;
/// leading blanks before an opening quote are tolerated.
fn parse_record(lines: &VecDeque<Line>) -> Parsed {
    #[derive(PartialEq)]
    enum St {
        Unquoted,
        Quoted,
        AfterQuote,
    }
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut st = St::Unquoted;
    for (used, line) in lines.iter().enumerate() {
        if let Some(e) = &line.bad {
            return Parsed::Broken(e.clone());
        }
        if used > 0 {
            // Only a quoted field continues onto the next line.
            cur.push('\n');
        }
        for c in line.text.chars() {
            match st {
                St::Unquoted => match c {
                    ',' => fields.push(std::mem::take(&mut cur)),
                    '"' if cur.trim().is_empty() => {
                        cur.clear();
                        st = St::Quoted;
                    }
                    '"' => {
                        return Parsed::Broken(RowError::BrokenQuoting(
                            "quote inside an unquoted field",
                        ))
                    }
                    c => cur.push(c),
                },
                St::Quoted => match c {
                    '"' => st = St::AfterQuote,
                    c => cur.push(c),
                },
                St::AfterQuote => match c {
                    '"' => {
                        cur.push('"');
                        st = St::Quoted;
                    }
                    ',' => {
                        fields.push(std::mem::take(&mut cur));
                        st = St::Unquoted;
                    }
                    ' ' | '\t' => {}
                    _ => {
                        return Parsed::Broken(RowError::BrokenQuoting(
                            "text after a closing quote",
                        ))
                    }
                },
            }
        }
        if st != St::Quoted {
            fields.push(cur);
            return Parsed::Done(fields, used + 1);
        }
    }
    Parsed::NeedMore
}

/// Reads records from physical lines, resynchronising on the next line
/// after a broken record so one stray quote cannot swallow good rows.
struct Records<R> {
    reader: R,
    buf: VecDeque<Line>,
    next_line: u64,
    eof: bool,
    columns: Option<usize>,
}

impl<R: BufRead> Records<R> {
    fn new(reader: R) -> Self {
        Records {
            reader,
            buf: VecDeque::new(),
            next_line: 1,
            eof: false,
            columns: None,
        }
    }

    /// Reads one physical line into the buffer; false at end of input.
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let mut bytes = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut bytes)?;
        if n == 0 {
            self.eof = true;
            return Ok(false);
        }
        let mut bad = None;
        if bytes.last() != Some(&b'\n') && bytes.len() > MAX_LINE_BYTES {
            // Skip the rest of the over-long line.
            loop {
                let chunk = self.reader.fill_buf()?;
                if chunk.is_empty() {
                    break;
                }
                if let Some(pos) = chunk.iter().position(|b| *b == b'\n') {
                    self.reader.consume(pos + 1);
                    break;
                }
                let len = chunk.len();
                self.reader.consume(len);
            }
            bytes.clear();
            bad = Some(RowError::LineTooLong);
        }
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        if self.next_line == 1 && bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
            bytes.drain(..3);
        }
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => {
                bad = Some(RowError::NotUtf8);
                String::new()
            }
        };
        self.buf.push_back(Line {
            number: self.next_line,
            text,
            bad,
        });
        self.next_line += 1;
        Ok(true)
    }

    /// The next record, a row error (with its line), or `None` at the end.
    fn next_record(&mut self) -> std::io::Result<Option<Result<Record, RowFailure>>> {
        loop {
            if self.buf.is_empty() && !self.fill()? {
                return Ok(None);
            }
            let Some(first) = self.buf.front() else {
                return Ok(None);
            };
            let line = first.number;
            if first.bad.is_none() && first.text.trim().is_empty() {
                self.buf.pop_front();
                continue;
            }
            match parse_record(&self.buf) {
                Parsed::Done(fields, used) => {
                    let expected = self.columns.unwrap_or(fields.len());
                    if fields.len() != expected {
                        self.buf.pop_front();
                        let reason = if used > 1 {
                            // A stray quote joined lines: retry them alone.
                            RowError::BrokenQuoting("unbalanced quote")
                        } else {
                            RowError::ColumnCount {
                                expected,
                                got: fields.len(),
                            }
                        };
                        return Ok(Some(Err(RowFailure { line, reason })));
                    }
                    self.buf.drain(..used);
                    return Ok(Some(Ok(Record { line, fields })));
                }
                Parsed::NeedMore => {
                    if self.buf.len() >= MAX_RECORD_LINES || !self.fill()? {
                        self.buf.pop_front();
                        return Ok(Some(Err(RowFailure {
                            line,
                            reason: RowError::BrokenQuoting("quoted field never closed"),
                        })));
                    }
                }
                Parsed::Broken(reason) => {
                    self.buf.pop_front();
                    return Ok(Some(Err(RowFailure { line, reason })));
                }
            }
        }
    }
}

/// What a header column feeds.
#[derive(Debug, Clone)]
enum Column {
    Name,
    Status,
    ContactName,
    Phones,
    Created,
    Custom(CustomField),
}

/// Maps the header row to columns, refusing unknown or duplicate ones.
fn map_header(headers: &[String], fields: &CustomFieldSet) -> Result<Vec<Column>, ImportError> {
    let mut cols = Vec::with_capacity(headers.len());
    let mut seen = std::collections::HashSet::new();
    for h in headers {
        let raw = h.trim();
        let lower = raw.to_ascii_lowercase();
        let col = match lower.as_str() {
            "name" | "lead_name" => Column::Name,
            "status" | "lead_status" => Column::Status,
            "contact" | "contact_name" => Column::ContactName,
            "phone" | "phones" => Column::Phones,
            "created" => Column::Created,
            p if p.starts_with("phone")
                && p.len() > 5
                && p[5..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                Column::Phones
            }
            _ => match raw.get(..7) {
                Some(prefix) if prefix.eq_ignore_ascii_case("custom.") => {
                    let name = raw[7..].trim().trim_matches('"');
                    Column::Custom(
                        fields
                            .get(name)
                            .cloned()
                            .ok_or_else(|| ImportError::UnknownCustomField(raw.to_string()))?,
                    )
                }
                _ => return Err(ImportError::UnknownColumn(raw.to_string())),
            },
        };
        let key = match &col {
            Column::Custom(f) => format!("custom.{}", f.name.to_lowercase()),
            _ => lower.clone(),
        };
        if !seen.insert(key) {
            return Err(ImportError::DuplicateColumn(raw.to_string()));
        }
        cols.push(col);
    }
    if !cols.iter().any(|c| matches!(c, Column::Name)) {
        return Err(ImportError::MissingName);
    }
    Ok(cols)
}

/// Turns one record into a lead, naming the column of the first bad cell.
fn row_to_lead(
    headers: &[String],
    cols: &[Column],
    rec: &Record,
    region: &str,
    now: DateTime<Utc>,
) -> Result<ValidLead, RowError> {
    let invalid = |i: usize, reason: ValidationReason| RowError::Invalid {
        column: headers.get(i).cloned().unwrap_or_default(),
        reason,
    };
    let mut lead = ValidLead {
        name: String::new(),
        status: String::new(),
        created_ms: time_to_ms(now),
        contacts: Vec::new(),
        custom: Vec::new(),
        opportunities: Vec::new(),
    };
    let mut contact = Contact {
        name: String::new(),
        phones: Vec::new(),
    };
    for (i, (col, cell)) in cols.iter().zip(&rec.fields).enumerate() {
        let cell = cell.trim();
        if cell.len() > MAX_TEXT_LEN {
            return Err(invalid(i, ValidationReason::TooLong(MAX_TEXT_LEN)));
        }
        match col {
            Column::Name => lead.name = cell.to_string(),
            Column::Status => lead.status = cell.to_string(),
            Column::ContactName => contact.name = cell.to_string(),
            Column::Created if cell.is_empty() => {}
            Column::Created => {
                lead.created_ms = time_to_ms(parse_time(cell).map_err(|r| invalid(i, r))?)
            }
            Column::Phones => {
                for raw in cell
                    .split([';', ','])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                {
                    let p = PhoneE164::parse(raw, region)
                        .map_err(|e| invalid(i, ValidationReason::Phone(e)))?;
                    if !contact.phones.contains(&p) {
                        contact.phones.push(p);
                    }
                }
            }
            Column::Custom(field) => {
                if let Some(v) = field.check_str(cell).map_err(|r| invalid(i, r))? {
                    lead.custom.push((field.id, v));
                }
            }
        }
    }
    if lead.name.is_empty() {
        let i = cols
            .iter()
            .position(|c| matches!(c, Column::Name))
            .unwrap_or(0);
        return Err(invalid(i, ValidationReason::Empty));
    }
    if !contact.name.is_empty() || !contact.phones.is_empty() {
        lead.contacts.push(contact);
    }
    Ok(lead)
}

type Item = Result<(u64, ValidLead), RowFailure>;

enum Msg {
    Batch(Vec<Item>),
    Fatal(ImportError),
}

/// The parsing side, on a blocking thread: header, then batches.
fn parse_side<R: Read>(
    reader: R,
    fields: CustomFieldSet,
    region: String,
    now: DateTime<Utc>,
    tx: tokio::sync::mpsc::Sender<Msg>,
) {
    let mut records = Records::new(BufReader::with_capacity(64 * 1024, reader));
    let header = match records.next_record() {
        Ok(Some(Ok(h))) => h,
        Ok(Some(Err(f))) => {
            let _ = tx.blocking_send(Msg::Fatal(ImportError::BadHeader {
                line: f.line,
                reason: f.reason,
            }));
            return;
        }
        Ok(None) => {
            let _ = tx.blocking_send(Msg::Fatal(ImportError::Empty));
            return;
        }
        Err(e) => {
            let _ = tx.blocking_send(Msg::Fatal(e.into()));
            return;
        }
    };
    let cols = match map_header(&header.fields, &fields) {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.blocking_send(Msg::Fatal(e));
            return;
        }
    };
    records.columns = Some(cols.len());
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    loop {
        let item = match records.next_record() {
            Ok(Some(Ok(rec))) => row_to_lead(&header.fields, &cols, &rec, &region, now)
                .map(|l| (rec.line, l))
                .map_err(|reason| RowFailure {
                    line: rec.line,
                    reason,
                }),
            Ok(Some(Err(f))) => Err(f),
            Ok(None) => break,
            Err(e) => {
                let _ = tx.blocking_send(Msg::Fatal(e.into()));
                return;
            }
        };
        batch.push(item);
        if batch.len() >= BATCH_ROWS {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
            if tx.blocking_send(Msg::Batch(full)).is_err() {
                return; // The storing side gave up.
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(Msg::Batch(batch));
    }
}

/// Stores one batch in one transaction; if the database refuses it as a
/// whole, stores its rows one by one so only the refused rows fail.
async fn store_batch(
    store: &Store,
    batch: Vec<Item>,
    now_ms: i64,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    let mut good = Vec::with_capacity(batch.len());
    for item in batch {
        match item {
            Ok(ok) => good.push(ok),
            Err(f) => report.fail(f),
        }
    }
    let leads: Vec<ValidLead> = good.iter().map(|(_, l)| l.clone()).collect();
    match store.insert_leads(&leads, now_ms).await {
        Ok(ids) => report.imported += ids.len() as u64,
        Err(StoreError::Invalid(_) | StoreError::Conflict(_)) => {
            for (line, lead) in good {
                match store
                    .insert_leads(std::slice::from_ref(&lead), now_ms)
                    .await
                {
                    Ok(_) => report.imported += 1,
                    Err(e @ (StoreError::Invalid(_) | StoreError::Conflict(_))) => {
                        report.fail(RowFailure {
                            line,
                            reason: RowError::Refused(e.to_string()),
                        })
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Imports leads from CSV text read from `reader`, numbers without a
/// country code read in `default_region`, leads without `created` created
/// at `now`. `progress` is called after each batch with the rows read so far.
pub async fn import_csv<R>(
    store: &Store,
    reader: R,
    default_region: &str,
    now: DateTime<Utc>,
    mut progress: impl FnMut(u64),
) -> Result<ImportReport, ImportError>
where
    R: Read + Send + 'static,
{
    let fields = store.custom_field_set().await?;
    // Two batches in flight: parsing the next while the last is stored.
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let region = default_region.to_string();
    let parser = tokio::task::spawn_blocking(move || parse_side(reader, fields, region, now, tx));
    let mut report = ImportReport::default();
    let now_ms = time_to_ms(now);
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Batch(batch) => {
                store_batch(store, batch, now_ms, &mut report).await?;
                progress(report.imported + report.failed_total);
            }
            Msg::Fatal(e) => return Err(e),
        }
    }
    parser
        .await
        .map_err(|e| ImportError::Io(std::io::Error::other(e.to_string())))?;
    Ok(report)
}

/// Imports the CSV file at `path` (the CLI's `powerdial import-leads FILE`);
/// see [`import_csv`]. Leads without `created` are created now.
#[allow(clippy::disallowed_methods)] // A driver: reads the wall clock once.
pub async fn import_csv_file(
    store: &Store,
    path: impl AsRef<Path>,
    default_region: &str,
    progress: impl FnMut(u64),
) -> Result<ImportReport, ImportError> {
    let file = std::fs::File::open(path.as_ref())?;
    import_csv(store, file, default_region, Utc::now(), progress).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str, columns: Option<usize>) -> Vec<Result<Record, RowFailure>> {
        let mut r = Records::new(text.as_bytes());
        r.columns = columns;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            out.push(rec);
        }
        out
    }

    fn ok(line: u64, fields: &[&str]) -> Result<Record, RowFailure> {
        Ok(Record {
            line,
            fields: fields.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn rfc4180_records_with_quotes_and_newlines() {
        let got = records(
            "a,b\r\n\"x, y\",\"say \"\"hi\"\"\"\n\n\"multi\nline\",z\nlast, \"q\" \n",
            Some(2),
        );
        assert_eq!(
            got,
            vec![
                ok(1, &["a", "b"]),
                ok(2, &["x, y", "say \"hi\""]),
                ok(4, &["multi\nline", "z"]),
                ok(6, &["last", "q"]),
            ]
        );
    }

    #[test]
    fn broken_quoting_resyncs_on_the_next_line() {
        let got = records("a,b\nx\"y,1\n\"open,2\nc,3\n\"d\"e,4\nf,5\n", Some(2));
        assert_eq!(got[0], ok(1, &["a", "b"]));
        assert!(matches!(
            &got[1],
            Err(RowFailure {
                line: 2,
                reason: RowError::BrokenQuoting(_)
            })
        ));
        // The unclosed quote on line 3 must not swallow lines 4 and 6.
        assert!(matches!(
            &got[2],
            Err(RowFailure {
                line: 3,
                reason: RowError::BrokenQuoting(_)
            })
        ));
        assert_eq!(got[3], ok(4, &["c", "3"]));
        assert!(matches!(
            &got[4],
            Err(RowFailure {
                line: 5,
                reason: RowError::BrokenQuoting(_)
            })
        ));
        assert_eq!(got[5], ok(6, &["f", "5"]));
        assert_eq!(got.len(), 6);
    }

    #[test]
    fn wrong_column_count_and_bad_bytes() {
        let mut text = b"a,b\n1,2,3\n".to_vec();
        text.extend_from_slice(b"\xff\xfe,x\nok,1\n");
        let mut r = Records::new(&text[..]);
        r.columns = Some(2);
        let mut got = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            got.push(rec);
        }
        assert!(matches!(
            &got[1],
            Err(RowFailure {
                line: 2,
                reason: RowError::ColumnCount {
                    expected: 2,
                    got: 3
                }
            })
        ));
        assert!(matches!(
            &got[2],
            Err(RowFailure {
                line: 3,
                reason: RowError::NotUtf8
            })
        ));
        assert_eq!(got[3], ok(4, &["ok", "1"]));
    }

    #[test]
    fn header_mapping_refuses_unknown_columns() {
        let fields = CustomFieldSet::new(vec![CustomField {
            id: 1,
            name: "Lead Source".into(),
            kind: super::super::model::CustomFieldKind::Text,
            choices: vec![],
        }]);
        let h = |cols: &[&str]| -> Vec<String> { cols.iter().map(|s| s.to_string()).collect() };
        assert!(map_header(
            &h(&["Name", "phone", "phone2", "custom.lead source", "created"]),
            &fields
        )
        .is_ok());
        assert!(matches!(
            map_header(&h(&["name", "emial"]), &fields),
            Err(ImportError::UnknownColumn(c)) if c == "emial"
        ));
        assert!(matches!(
            map_header(&h(&["name", "custom.Nope"]), &fields),
            Err(ImportError::UnknownCustomField(_))
        ));
        assert!(matches!(
            map_header(&h(&["name", "name"]), &fields),
            Err(ImportError::DuplicateColumn(_))
        ));
        assert!(matches!(
            map_header(&h(&["status"]), &fields),
            Err(ImportError::MissingName)
        ));
    }
}
