//! Streaming CSV import of leads (SPEC §4 `powerdial import-leads`,
//! `POST /api/v1/leads/import`).
//!
//! The header row maps columns: `name`, `status`, `contact` /
//! `contact_name`, `phone` / `phones` (several numbers in one cell separated
//! by `;` or `,`) and `phone2`, `phone3`…, `email` / `emails` (likewise),
//! `custom.NAME`, `created` (RFC 3339
//! or `YYYY-MM-DD`). An unknown column refuses the whole import before any
//! row is read. Rows are read by the `csv` crate on a blocking thread (RFC
//! 4180 records, quoted fields may span lines) and handed over in batches of
//! [`BATCH_ROWS`], each stored all or none ([`crate::store::LeadLoader`]);
//! memory stays bounded whatever the file's size. A bad row (bad phone, wrong type, broken
//! quoting, wrong column count) is reported with the line it starts on and
//! does not stop or roll back the others.

use std::io::Read;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

use super::model::{
    parse_time, time_to_ms, Contact, CustomField, CustomFieldSet, ValidLead, ValidationReason,
    MAX_TEXT_LEN,
};
use super::phone::PhoneE164;
use crate::store::{LeadLoader, Store, StoreError, SQLITE_COMMIT_ROWS};

/// Rows per batch: the unit handed from parsing to storing, stored all or
/// none, and of the progress calls. SQLite commits several batches at once
/// ([`SQLITE_COMMIT_ROWS`]). Memory stays bounded: two batches wait while
/// each storing lane works on one and holds one more.
pub const BATCH_ROWS: usize = 5000;
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
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RowFailure {
    /// The 1-based line the row starts on (the header is line 1).
    pub line: u64,
    /// Why.
    #[schema(value_type = String)]
    pub reason: RowError,
}

/// The result of an import.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
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

/// Most bytes the tape keeps for one record (its text plus the csv
/// reader's read-ahead): a quote that is never closed ends its record here
/// instead of reading the whole file into memory.
const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

/// The input as the `csv` reader pulls it, keeping the bytes of the record
/// being read so they can be checked and, after a broken record, read
/// again from its second line.
///
/// Hand-written because no crate fits: `csv` (csv-core) parses RFC 4180
/// records but accepts malformed quoting silently (a quote inside an
/// unquoted field is kept as text, an unclosed quote swallows the rest of
/// the file) and has no strict mode, while the import must report such a
/// row by its line and go on with the next line.
struct Tape<R> {
    inner: R,
    /// Bytes to serve again before `inner` (after a rewind).
    replay: Vec<u8>,
    replay_pos: usize,
    /// Bytes served to the current reader from offset `kept_from` on.
    kept: Vec<u8>,
    kept_from: u64,
    /// Drop input up to and including the next `\n` (the rest of an
    /// over-long line).
    skip_line: bool,
    /// `kept` reached [`MAX_RECORD_BYTES`]: input ends here for this reader.
    capped: bool,
    /// A UTF-8 byte order mark at the very start is dropped.
    at_start: bool,
}

impl<R: Read> Tape<R> {
    fn new(inner: R) -> Self {
        Tape {
            inner,
            replay: Vec::new(),
            replay_pos: 0,
            kept: Vec::new(),
            kept_from: 0,
            skip_line: false,
            capped: false,
            at_start: true,
        }
    }

    fn pull(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.replay_pos < self.replay.len() {
            let n = out.len().min(self.replay.len() - self.replay_pos);
            out[..n].copy_from_slice(&self.replay[self.replay_pos..self.replay_pos + n]);
            self.replay_pos += n;
            return Ok(n);
        }
        let mut n = self.inner.read(out)?;
        if self.at_start && n > 0 {
            self.at_start = false;
            if out[..n].starts_with(&[0xEF, 0xBB, 0xBF]) {
                out.copy_within(3..n, 0);
                n -= 3;
            }
        }
        Ok(n)
    }

    /// The bytes served at offsets `start..end` of the current reader.
    fn raw(&self, start: u64, end: u64) -> &[u8] {
        let from = usize::try_from(start.saturating_sub(self.kept_from)).unwrap_or(usize::MAX);
        let to = usize::try_from(end.saturating_sub(self.kept_from)).unwrap_or(usize::MAX);
        self.kept
            .get(from.min(self.kept.len())..to.min(self.kept.len()))
            .unwrap_or(&[])
    }

    /// Forgets the bytes before offset `to` (a record is done).
    fn discard_to(&mut self, to: u64) {
        let n = usize::try_from(to.saturating_sub(self.kept_from)).unwrap_or(usize::MAX);
        self.kept.drain(..n.min(self.kept.len()));
        self.kept_from = to;
    }

    /// Serves again from offset `to` of the current reader, to a new reader
    /// starting at offset 0; with `skip_line`, from the line after it.
    fn rewind(&mut self, to: u64, skip_line: bool) {
        let from = usize::try_from(to.saturating_sub(self.kept_from)).unwrap_or(usize::MAX);
        let mut replay = self.kept.split_off(from.min(self.kept.len()));
        replay.extend_from_slice(&self.replay[self.replay_pos..]);
        self.replay = replay;
        self.replay_pos = 0;
        self.kept.clear();
        self.kept_from = 0;
        self.skip_line = skip_line;
        self.capped = false;
    }
}

impl<R: Read> Read for Tape<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.kept.len() >= MAX_RECORD_BYTES {
                self.capped = true;
                return Ok(0);
            }
            let room = out.len().min(MAX_RECORD_BYTES - self.kept.len());
            let mut n = self.pull(&mut out[..room])?;
            if n == 0 {
                return Ok(0);
            }
            if self.skip_line {
                match out[..n].iter().position(|b| *b == b'\n') {
                    Some(p) => {
                        self.skip_line = false;
                        out.copy_within(p + 1..n, 0);
                        n -= p + 1;
                        if n == 0 {
                            continue;
                        }
                    }
                    None => continue,
                }
            }
            self.kept.extend_from_slice(&out[..n]);
            return Ok(n);
        }
    }
}

/// Where quoting breaks RFC 4180 §2 (rules 5–7) in a record's raw text:
/// a quote inside an unquoted field, text after a closing quote (blanks
/// aside), or a quoted field never closed. The `csv` reader accepts all
/// three silently, so they are checked here.
fn quoting_error(raw: &[u8]) -> Option<&'static str> {
    #[derive(Clone, Copy)]
    enum St {
        FieldStart,
        Unquoted,
        Quoted,
        AfterQuote,
        AfterQuoteBlank,
    }
    let mut st = St::FieldStart;
    for &b in raw {
        st = match (st, b) {
            (St::Quoted, b'"') => St::AfterQuote,
            (St::Quoted, _) => St::Quoted,
            (St::AfterQuote, b'"') => St::Quoted,
            (_, b',' | b'\r' | b'\n') => St::FieldStart,
            (St::FieldStart, b'"') => St::Quoted,
            (St::FieldStart | St::Unquoted, _) if b == b'"' => {
                return Some("quote inside an unquoted field")
            }
            (St::FieldStart | St::Unquoted, _) => St::Unquoted,
            (St::AfterQuote | St::AfterQuoteBlank, b' ' | b'\t') => St::AfterQuoteBlank,
            (St::AfterQuote | St::AfterQuoteBlank, _) => return Some("text after a closing quote"),
        };
    }
    matches!(st, St::Quoted).then_some("quoted field never closed")
}

/// Streams records with `csv` (flexible, so a wrong column count is one
/// row's error) and their first line, and resynchronises on the next line
/// after a broken record so one stray quote cannot swallow good rows.
struct Records<R> {
    reader: Option<csv::Reader<Tape<R>>>,
    /// Lines before the current reader's first (it counts from 1).
    line_base: u64,
    columns: Option<usize>,
    record: csv::ByteRecord,
}

fn csv_reader<R: Read>(tape: Tape<R>) -> csv::Reader<Tape<R>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(64 * 1024)
        .from_reader(tape)
}

/// What to do with the input after a record.
enum Next {
    /// Go on after it.
    Continue,
    /// Read again from the record's second line.
    FromLine(u64),
    /// Read again from the line after its first one (over-long line).
    SkipLine,
}

impl<R: Read> Records<R> {
    fn new(reader: R) -> Self {
        Records {
            reader: Some(csv_reader(Tape::new(reader))),
            line_base: 0,
            columns: None,
            record: csv::ByteRecord::new(),
        }
    }

    /// The next record, a row error (with its line), or `None` at the end.
    fn next_record(&mut self) -> std::io::Result<Option<Result<Record, RowFailure>>> {
        loop {
            let Some(reader) = self.reader.as_mut() else {
                return Ok(None);
            };
            let more =
                reader
                    .read_byte_record(&mut self.record)
                    .map_err(|e| match e.into_kind() {
                        csv::ErrorKind::Io(io) => io,
                        other => std::io::Error::other(format!("{other:?}")),
                    })?;
            if !more {
                return Ok(None);
            }
            let pos = self
                .record
                .position()
                .cloned()
                .unwrap_or_else(csv::Position::new);
            let start = pos.byte();
            let end = reader.position().byte();
            let tape = reader.get_ref();
            let capped = tape.capped;
            let raw = tape.raw(start, end);
            // csv skips blank lines before a record; its position is theirs.
            let lead = raw
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            let blank_lines = raw[..lead].iter().filter(|b| **b == b'\n').count() as u64;
            let line = self.line_base + pos.line() + blank_lines;
            let mut body = &raw[lead..];
            while let [rest @ .., b'\r' | b'\n'] = body {
                body = rest;
            }
            let second_line = body
                .iter()
                .position(|b| *b == b'\n')
                .map(|i| start + (lead + i + 1) as u64);
            let spans = body.iter().filter(|b| **b == b'\n').count() + 1;
            let too_long = body
                .split(|b| *b == b'\n')
                .any(|l| l.len() > MAX_LINE_BYTES);

            let (result, next) = if too_long {
                let next = match second_line {
                    Some(at) => Next::FromLine(at),
                    None if capped => Next::SkipLine,
                    None => Next::Continue,
                };
                (Some(Err(RowError::LineTooLong)), next)
            } else if let Some(why) = quoting_error(body) {
                let next = second_line.map_or(Next::Continue, Next::FromLine);
                (Some(Err(RowError::BrokenQuoting(why))), next)
            } else if spans > MAX_RECORD_LINES {
                let next = second_line.map_or(Next::Continue, Next::FromLine);
                let why = "quoted field never closed";
                (Some(Err(RowError::BrokenQuoting(why))), next)
            } else if self.record.len() == 1 && body.iter().all(|b| matches!(b, b' ' | b'\t')) {
                // A line of blanks is no record.
                (None, Next::Continue)
            } else {
                let expected = self.columns.unwrap_or(self.record.len());
                if self.record.len() != expected {
                    match second_line {
                        // A stray quote joined lines: retry them alone.
                        Some(at) => (
                            Some(Err(RowError::BrokenQuoting("unbalanced quote"))),
                            Next::FromLine(at),
                        ),
                        None => (
                            Some(Err(RowError::ColumnCount {
                                expected,
                                got: self.record.len(),
                            })),
                            Next::Continue,
                        ),
                    }
                } else {
                    let fields: Result<Vec<String>, RowError> = self
                        .record
                        .iter()
                        .map(|f| {
                            std::str::from_utf8(f)
                                .map(str::to_string)
                                .map_err(|_| RowError::NotUtf8)
                        })
                        .collect();
                    (Some(fields), Next::Continue)
                }
            };
            match next {
                Next::Continue => {
                    if let Some(r) = self.reader.as_mut() {
                        r.get_mut().discard_to(end);
                    }
                }
                Next::FromLine(at) => self.rewind(at, false, line),
                Next::SkipLine => self.rewind(start + lead as u64, true, line),
            }
            match result {
                Some(Ok(fields)) => return Ok(Some(Ok(Record { line, fields }))),
                Some(Err(reason)) => return Ok(Some(Err(RowFailure { line, reason }))),
                None => continue,
            }
        }
    }

    /// A new reader from offset `at` of the current one (line `line + 1`
    /// on); the bytes before it are done.
    fn rewind(&mut self, at: u64, skip_line: bool, line: u64) {
        if let Some(reader) = self.reader.take() {
            let mut tape = reader.into_inner();
            tape.rewind(at, skip_line);
            self.reader = Some(csv_reader(tape));
            self.line_base = line;
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
    Emails,
    Created,
    /// The lead's "do not call" mark: `true`/`false`, `yes`/`no`, `1`/`0`.
    DoNotCall,
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
            "email" | "emails" => Column::Emails,
            "created" => Column::Created,
            "do_not_call" | "do not call" | "dnc" => Column::DoNotCall,
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
        do_not_call: false,
    };
    let mut contact = Contact {
        name: String::new(),
        phones: Vec::new(),
        emails: Vec::new(),
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
            Column::DoNotCall => {
                lead.do_not_call = match cell.to_ascii_lowercase().as_str() {
                    "" | "false" | "no" | "0" => false,
                    "true" | "yes" | "1" => true,
                    _ => {
                        return Err(invalid(
                            i,
                            ValidationReason::NotAChoice {
                                got: cell.to_string(),
                                choices: vec!["true".into(), "false".into()],
                            },
                        ))
                    }
                }
            }
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
            Column::Emails => {
                for raw in cell
                    .split([';', ','])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                {
                    let e = crate::leads::model::check_email(raw).map_err(|r| invalid(i, r))?;
                    if !contact.emails.contains(&e) {
                        contact.emails.push(e);
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
    if !contact.name.is_empty() || !contact.phones.is_empty() || !contact.emails.is_empty() {
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
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    let parsed = parse_rows(reader, &fields, &region, now, |item| {
        batch.push(item);
        if batch.len() >= BATCH_ROWS {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
            // False when the storing side gave up.
            return tx.blocking_send(Msg::Batch(full)).is_ok();
        }
        true
    });
    match parsed {
        Ok(()) if !batch.is_empty() => {
            let _ = tx.blocking_send(Msg::Batch(batch));
        }
        Ok(()) => {}
        Err(e) => {
            let _ = tx.blocking_send(Msg::Fatal(e));
        }
    }
}

/// Parses CSV lead rows without storing them: the header, then each row
/// as a lead ready to store (with its line) or the reason it is refused,
/// handed to `row` in order until it returns false. Errors only for what
/// stops the whole file (no header, an unknown column, unreadable input).
/// The import's parsing side; also what `check_csv` and the fuzz target
/// (`fuzz/fuzz_targets/csv_import.rs`) call.
pub fn parse_rows<R: Read>(
    reader: R,
    fields: &CustomFieldSet,
    region: &str,
    now: DateTime<Utc>,
    mut row: impl FnMut(Result<(u64, ValidLead), RowFailure>) -> bool,
) -> Result<(), ImportError> {
    let mut records = Records::new(reader);
    let header = match records.next_record()? {
        Some(Ok(h)) => h,
        Some(Err(f)) => {
            return Err(ImportError::BadHeader {
                line: f.line,
                reason: f.reason,
            })
        }
        None => return Err(ImportError::Empty),
    };
    let cols = map_header(&header.fields, fields)?;
    records.columns = Some(cols.len());
    loop {
        let item = match records.next_record()? {
            Some(Ok(rec)) => row_to_lead(&header.fields, &cols, &rec, region, now)
                .map(|l| (rec.line, l))
                .map_err(|reason| RowFailure {
                    line: rec.line,
                    reason,
                }),
            Some(Err(f)) => Err(f),
            None => return Ok(()),
        };
        if !row(item) {
            return Ok(());
        }
    }
}

/// What storing one batch gave: leads stored, rows not stored (in line
/// order).
struct BatchOutcome {
    imported: u64,
    failed: Vec<RowFailure>,
}

/// Stores one batch, all or none; if the database refuses it as a whole,
/// stores its rows one by one so only the refused rows fail.
async fn store_batch(
    loader: &mut LeadLoader,
    batch: Vec<Item>,
    now_ms: i64,
) -> Result<BatchOutcome, StoreError> {
    let mut failed = Vec::new();
    let mut lines = Vec::with_capacity(batch.len());
    let mut leads = Vec::with_capacity(batch.len());
    for item in batch {
        match item {
            Ok((line, lead)) => {
                lines.push(line);
                leads.push(lead);
            }
            Err(f) => failed.push(f),
        }
    }
    let mut imported = 0;
    match loader.insert(&leads, now_ms).await {
        Ok(ids) => imported += ids.len() as u64,
        Err(StoreError::Invalid(_) | StoreError::Conflict(_)) => {
            for (line, lead) in lines.into_iter().zip(&leads) {
                match loader.insert(std::slice::from_ref(lead), now_ms).await {
                    Ok(_) => imported += 1,
                    Err(e @ (StoreError::Invalid(_) | StoreError::Conflict(_))) => {
                        failed.push(RowFailure {
                            line,
                            reason: RowError::Refused(e.to_string()),
                        })
                    }
                    Err(e) => return Err(e),
                }
            }
            failed.sort_by_key(|f| f.line);
        }
        Err(e) => return Err(e),
    }
    Ok(BatchOutcome { imported, failed })
}

/// One batch for a storing lane, and where its outcome goes.
struct Job {
    batch: Vec<Item>,
    done: tokio::sync::oneshot::Sender<Result<BatchOutcome, StoreError>>,
}

/// How long a storing lane keeps one SQLite transaction open at most. An
/// import beside a running dialer holds SQLite's one write lock while its
/// transaction is open: the dialer's claims, call records and leg journal
/// queue behind it, and the journal's bounded channel must not fill (the
/// agent tasks would wait on it in the middle of a call). Half a second of
/// lock holds a few thousand leads at the import's speed and keeps the
/// dialer's writes at most about that late: the age is checked between
/// batches, so a writer beside the import waits up to this plus one
/// batch's store time and the commit (a call-record writer every 20 ms
/// beside a 100,000-lead import, `benches/import.rs --probe-ms`: max 1.1 s
/// at 500 ms, 1.7 s at 1 s, 2.6 s at 2 s, in a debug build under load).
pub const SQLITE_COMMIT_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// How an import runs, past its input: what the shipped import uses
/// ([`ImportOptions::default`]) and what a benchmark may vary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportOptions {
    /// How long one SQLite transaction of the import stays open at most
    /// ([`SQLITE_COMMIT_AFTER`]).
    pub sqlite_commit_after: std::time::Duration,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            sqlite_commit_after: SQLITE_COMMIT_AFTER,
        }
    }
}

/// A storing lane: stores the batches it is given in order with one
/// [`LeadLoader`], committing every [`SQLITE_COMMIT_ROWS`] leads, once its
/// transaction is `commit_after` old ([`SQLITE_COMMIT_AFTER`] as shipped),
/// whenever no batch is waiting
/// (so a transaction is never held open while the input is read), and at
/// the end.
#[allow(clippy::disallowed_methods)] // a driver: the transaction's age.
async fn lane(
    store: Store,
    mut jobs: tokio::sync::mpsc::Receiver<Job>,
    now_ms: i64,
    commit_after: std::time::Duration,
) -> Result<(), StoreError> {
    let mut loader = store.lead_loader();
    let mut opened: Option<std::time::Instant> = None;
    while let Some(job) = jobs.recv().await {
        let opened_at = *opened.get_or_insert_with(std::time::Instant::now);
        match store_batch(&mut loader, job.batch, now_ms).await {
            Ok(outcome) => {
                let _ = job.done.send(Ok(outcome));
            }
            Err(e) => {
                // Nothing more is stored. The batches before this one were
                // reported stored: keep them (the failed one rolled back
                // alone), if the database still takes a commit.
                let _ = job.done.send(Err(e));
                let _ = loader.finish().await;
                return Ok(());
            }
        }
        if loader.pending() >= SQLITE_COMMIT_ROWS
            || opened_at.elapsed() >= commit_after
            || jobs.is_empty()
        {
            if let Err(e) = loader.commit().await {
                let _ = loader.finish().await;
                return Err(e);
            }
            opened = None;
        }
    }
    loader.finish().await
}

/// Imports leads from CSV text read from `reader`, numbers without a
/// country code read in `default_region`, leads without `created` created
/// at `now`. `progress` is called after each batch with the rows read so far.
///
/// Parsing runs on a blocking thread, [`BATCH_ROWS`] rows per batch, two
/// batches ahead of storing; batches are stored by [`Store::bulk_lanes`]
/// lanes at once (round robin) and their outcomes taken in file order, so
/// memory stays bounded to a few batches whatever the file's size. When
/// the database fails, the import stops with the error; what was committed
/// before stays.
pub async fn import_csv<R>(
    store: &Store,
    reader: R,
    default_region: &str,
    now: DateTime<Utc>,
    progress: impl FnMut(u64),
) -> Result<ImportReport, ImportError>
where
    R: Read + Send + 'static,
{
    import_csv_with(
        store,
        reader,
        default_region,
        now,
        ImportOptions::default(),
        progress,
    )
    .await
}

/// [`import_csv`] with `options` instead of the shipped ones.
pub async fn import_csv_with<R>(
    store: &Store,
    reader: R,
    default_region: &str,
    now: DateTime<Utc>,
    options: ImportOptions,
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
    let now_ms = time_to_ms(now);
    let lanes: Vec<_> = (0..store.bulk_lanes().max(1))
        .map(|_| {
            let (jobs_tx, jobs_rx) = tokio::sync::mpsc::channel(1);
            (
                jobs_tx,
                tokio::spawn(lane(
                    store.clone(),
                    jobs_rx,
                    now_ms,
                    options.sqlite_commit_after,
                )),
            )
        })
        .collect();
    let mut report = ImportReport::default();
    let mut outcomes = std::collections::VecDeque::new();
    let mut next = 0usize;
    let mut fatal = None;
    let mut take = |outcome: Result<Result<BatchOutcome, StoreError>, _>,
                    report: &mut ImportReport|
     -> Result<(), ImportError> {
        // A lane that stopped on an error is reported by its handle.
        let Ok(outcome) = outcome else {
            return Ok(());
        };
        let outcome = outcome?;
        report.imported += outcome.imported;
        for f in outcome.failed {
            report.fail(f);
        }
        progress(report.imported + report.failed_total);
        Ok(())
    };
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Batch(batch) => {
                let (done, outcome) = tokio::sync::oneshot::channel();
                let (jobs, _) = &lanes[next % lanes.len()];
                next += 1;
                if jobs.send(Job { batch, done }).await.is_err() {
                    break;
                }
                outcomes.push_back(outcome);
                while outcomes.len() > lanes.len() {
                    if let Some(o) = outcomes.pop_front() {
                        if let Err(e) = take(o.await, &mut report) {
                            fatal = Some(e);
                            break;
                        }
                    }
                }
                if fatal.is_some() {
                    break;
                }
            }
            Msg::Fatal(e) => {
                fatal = Some(e);
                break;
            }
        }
    }
    drop(rx);
    // Let every lane finish (and commit) what it was given.
    while let Some(o) = outcomes.pop_front() {
        if let Err(e) = take(o.await, &mut report) {
            fatal.get_or_insert(e);
        }
    }
    for (jobs, handle) in lanes {
        drop(jobs);
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                fatal.get_or_insert(e.into());
            }
            Err(e) => {
                fatal.get_or_insert(ImportError::Io(std::io::Error::other(e.to_string())));
            }
        }
    }
    if let Some(e) = fatal {
        return Err(e);
    }
    parser
        .await
        .map_err(|e| ImportError::Io(std::io::Error::other(e.to_string())))?;
    store.sync().await?;
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
            "\u{feff}a,b\r\n\"x, y\",\"say \"\"hi\"\"\"\n\n\"multi\nline\",z\n  \nlast,\"q\" \n\"\",\n",
            Some(2),
        );
        assert_eq!(
            got,
            vec![
                ok(1, &["a", "b"]),
                ok(2, &["x, y", "say \"hi\""]),
                ok(4, &["multi\nline", "z"]),
                // Blanks after a closing quote are tolerated (the cell is
                // trimmed later); a line of blanks is no record.
                ok(7, &["last", "q "]),
                ok(8, &["", ""]),
            ]
        );
    }

    /// RFC 4180 §2 rule 5: a quote opens a quoted field only as its first
    /// character; after a blank it is text, and a quote inside an unquoted
    /// field is broken quoting, reported by line (`csv` alone would keep it).
    #[test]
    fn quote_after_a_blank_is_broken_quoting() {
        let got = records("a,b\nlast, \"q\"\nok,1\n", Some(2));
        assert!(matches!(
            &got[1],
            Err(RowFailure {
                line: 2,
                reason: RowError::BrokenQuoting("quote inside an unquoted field")
            })
        ));
        assert_eq!(got[2], ok(3, &["ok", "1"]));
    }

    /// An over-long line fails its row alone; the next line is read.
    #[test]
    fn over_long_lines_fail_their_row() {
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let got = records(&format!("a,b\n{long},1\nok,2\n"), Some(2));
        assert!(matches!(
            &got[1],
            Err(RowFailure {
                line: 2,
                reason: RowError::LineTooLong
            })
        ));
        assert_eq!(got[2], ok(3, &["ok", "2"]));
    }

    /// A quote never closed ends its record at the memory bound and the
    /// lines after it are still read, one by one.
    #[test]
    fn unclosed_quote_in_a_large_file_stays_bounded() {
        let mut text = String::from("a,b\n\"open,1\n");
        let rows = MAX_RECORD_BYTES / 8 + 10;
        for i in 0..rows {
            text.push_str(&format!("r{i:05},2\n"));
        }
        let mut r = Records::new(text.as_bytes());
        r.columns = Some(2);
        let mut good = 0;
        let mut failed = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            match rec {
                Ok(_) => good += 1,
                Err(f) => failed.push(f.line),
            }
            let kept = r.reader.as_ref().map_or(0, |x| x.get_ref().kept.len());
            assert!(kept <= MAX_RECORD_BYTES, "{kept} bytes kept");
        }
        assert_eq!(failed, vec![2]);
        assert_eq!(good, 1 + rows);
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

    fn lead(name: &str, custom: Vec<(i64, crate::leads::model::CustomValue)>) -> ValidLead {
        ValidLead {
            name: name.into(),
            status: String::new(),
            created_ms: 1_790_000_000_000,
            contacts: Vec::new(),
            custom,
            opportunities: Vec::new(),
            do_not_call: false,
        }
    }

    /// A batch the database refuses is stored row by row: only the refused
    /// row fails, by its line, beside the rows parsing refused, in line
    /// order (real SQLite file).
    #[tokio::test]
    async fn a_refused_row_fails_alone_by_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::connect(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .unwrap();
        let mut loader = store.lead_loader();
        let bad = crate::leads::model::CustomValue::Text("x".into());
        let batch = vec![
            Ok((2, lead("A", vec![]))),
            Err(RowFailure {
                line: 4,
                reason: RowError::NotUtf8,
            }),
            Ok((3, lead("B", vec![(999_999, bad)]))),
            Ok((5, lead("C", vec![]))),
        ];
        let out = store_batch(&mut loader, batch, 0).await.unwrap();
        loader.commit().await.unwrap();
        assert_eq!(out.imported, 2);
        let lines: Vec<u64> = out.failed.iter().map(|f| f.line).collect();
        assert_eq!(lines, vec![3, 4]);
        assert!(matches!(out.failed[0].reason, RowError::Refused(_)));
        assert_eq!(store.count_leads().await.unwrap(), 2);
        store.close().await;
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
