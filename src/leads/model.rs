//! The lead model and its JSON shape (SPEC §4), custom fields with typed
//! values (SPEC §3), opportunities, call records and Smart Views.
//!
//! Two families of types: the stored ones (`Lead`, `CallRecord`, …) that
//! come back from the store with ids, and the inputs (`NewLead`,
//! `LeadPatch`, `NewCall`, …) that are validated into `Valid*` values before
//! any write, so the store never sees an unchecked value.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::phone::{PhoneE164, PhoneError};

/// A validation failure naming the field it concerns (`contacts[0].phones[1]`,
/// `custom.Lead Source`), so the API can answer 400 with the field (SPEC §4).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// Path of the offending field in the input.
    pub field: String,
    /// What is wrong with it.
    pub reason: ValidationReason,
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationReason {
    /// A required value is empty.
    #[error("must not be empty")]
    Empty,
    /// A phone number that cannot be normalised to E.164.
    #[error("{0}")]
    Phone(#[from] PhoneError),
    /// No custom field of this name is defined (`POST /api/v1/custom-fields`).
    #[error("no custom field of this name is defined")]
    UnknownCustomField,
    /// The value does not have the custom field's type.
    #[error("expected {expected}, got {got}")]
    WrongType {
        /// The field's kind, as written in the API.
        expected: CustomFieldKind,
        /// The offending value, shortened.
        got: String,
    },
    /// A `choices` value that is not one of the choices.
    #[error("{got:?} is not one of {choices:?}")]
    NotAChoice {
        /// The offending value.
        got: String,
        /// The allowed values.
        choices: Vec<String>,
    },
    /// Not a time in RFC 3339 (or `YYYY-MM-DD`) form.
    #[error("not an RFC 3339 time or YYYY-MM-DD date: {0:?}")]
    BadTime(String),
    /// A `choices` field defined without choices, or with an empty one.
    #[error("a choices field needs a non-empty list of non-empty choices")]
    NoChoices,
    /// A number that is NaN or infinite.
    #[error("not a finite number")]
    NotFinite,
    /// A string longer than the limit.
    #[error("longer than {0} characters")]
    TooLong(usize),
    /// Not an email address (`name@example.com`).
    #[error("not an email address: {0:?}")]
    BadEmail(String),
    /// Not a number or number prefix for the do-not-call list.
    #[error("{0}")]
    DncPattern(#[from] super::dnc::DncPatternError),
}

impl ValidationError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<ValidationReason>) -> Self {
        ValidationError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Longest accepted name, status, contact name or text value: bounds what
/// one request can make the database store per field.
pub const MAX_TEXT_LEN: usize = 4096;

/// Converts epoch milliseconds (the database's time unit) to a UTC time.
pub fn ms_to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Converts a UTC time to epoch milliseconds (the database's time unit).
pub fn time_to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Parses an RFC 3339 time, or a `YYYY-MM-DD` date read as midnight UTC
/// (imports keep their history: SPEC §4 "`created` may be given").
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, ValidationReason> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc());
        }
    }
    Err(ValidationReason::BadTime(shorten(s)))
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 40 {
        let mut out: String = s.chars().take(40).collect();
        out.push('…');
        out
    } else {
        s.to_string()
    }
}

/// RFC 3339 timestamps in JSON (SPEC §4: "Timestamps are RFC 3339 strings
/// everywhere (no epoch numbers)"), for `serde(with)` / `serialize_with`.
pub mod rfc3339 {
    use super::*;

    /// Epoch milliseconds (the database's unit) as an RFC 3339 string.
    pub fn serialize_ms<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        serialize(&ms_to_time(*ms), s)
    }

    /// Optional epoch milliseconds as an RFC 3339 string or `null`.
    pub fn serialize_opt_ms<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => serialize_ms(ms, s),
            None => s.serialize_none(),
        }
    }

    /// A time as an RFC 3339 string (UTC, milliseconds).
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    /// An RFC 3339 time (or `YYYY-MM-DD`, see [`parse_time`]).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        parse_time(&s).map_err(serde::de::Error::custom)
    }

    /// The same for `Option<DateTime<Utc>>` (`null` when absent).
    pub mod option {
        use super::*;

        /// An optional time as an RFC 3339 string or `null`.
        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        /// An optional RFC 3339 time.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(s) => parse_time(&s).map(Some).map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}

/// The type of a custom field (SPEC §3: text, number, date, datetime,
/// choices); the `kind` column of `custom_fields`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CustomFieldKind {
    /// Free text, compared case-insensitively.
    Text,
    /// A finite number.
    Number,
    /// A calendar date `YYYY-MM-DD`, stored as midnight UTC.
    Date,
    /// An RFC 3339 instant.
    Datetime,
    /// One of a fixed list of strings.
    Choices,
}

impl CustomFieldKind {
    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            CustomFieldKind::Text => "text",
            CustomFieldKind::Number => "number",
            CustomFieldKind::Date => "date",
            CustomFieldKind::Datetime => "datetime",
            CustomFieldKind::Choices => "choices",
        }
    }

    /// Reads the database's `kind` column.
    pub fn parse(s: &str) -> Option<CustomFieldKind> {
        Some(match s {
            "text" => CustomFieldKind::Text,
            "number" => CustomFieldKind::Number,
            "date" => CustomFieldKind::Date,
            "datetime" => CustomFieldKind::Datetime,
            "choices" => CustomFieldKind::Choices,
            _ => return None,
        })
    }
}

impl std::fmt::Display for CustomFieldKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A defined custom field (`POST /api/v1/custom-fields`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CustomField {
    /// Database id.
    pub id: i64,
    /// Its name, unique case-insensitively (`Lead Source`).
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: CustomFieldKind,
    /// The allowed values of a `choices` field, empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
}

/// Input of `POST /api/v1/custom-fields`: `{name, type, choices?}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCustomField {
    /// The field's name.
    #[schema(min_length = 1, pattern = r"\S")]
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: CustomFieldKind,
    /// The allowed values, for `choices` only.
    #[serde(default)]
    pub choices: Vec<String>,
}

impl NewCustomField {
    /// Checks the name and, for `choices`, the list of choices.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err(ValidationError::new("name", ValidationReason::Empty));
        }
        if name.len() > 200 {
            return Err(ValidationError::new("name", ValidationReason::TooLong(200)));
        }
        if self.kind == CustomFieldKind::Choices
            && (self.choices.is_empty() || self.choices.iter().any(|c| c.trim().is_empty()))
        {
            return Err(ValidationError::new("choices", ValidationReason::NoChoices));
        }
        Ok(())
    }
}

/// The custom fields known to the store, looked up by name
/// case-insensitively (`custom.lead source` is `custom.Lead Source`).
#[derive(Debug, Clone, Default)]
pub struct CustomFieldSet {
    by_lower_name: BTreeMap<String, CustomField>,
}

impl CustomFieldSet {
    /// Builds the set from the store's list.
    pub fn new(fields: Vec<CustomField>) -> Self {
        CustomFieldSet {
            by_lower_name: fields
                .into_iter()
                .map(|f| (f.name.to_lowercase(), f))
                .collect(),
        }
    }

    /// The field named `name`, ignoring case.
    pub fn get(&self, name: &str) -> Option<&CustomField> {
        self.by_lower_name.get(&name.trim().to_lowercase())
    }

    /// The field with database id `id`.
    pub fn by_id(&self, id: i64) -> Option<&CustomField> {
        self.by_lower_name.values().find(|f| f.id == id)
    }

    /// Checks a JSON value against `field`'s type; `null` and `""` mean
    /// "no value" (SPEC §3: `field:""` matches an empty or missing value).
    pub fn check_json(
        &self,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<(i64, Option<CustomValue>), ValidationError> {
        let path = format!("custom.{name}");
        let field = self
            .get(name)
            .ok_or_else(|| ValidationError::new(&path, ValidationReason::UnknownCustomField))?;
        let typed = match value {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => field
                .check_str(s)
                .map_err(|r| ValidationError::new(&path, r))?,
            serde_json::Value::Number(n) if field.kind == CustomFieldKind::Number => {
                let f = n
                    .as_f64()
                    .ok_or_else(|| ValidationError::new(&path, ValidationReason::NotFinite))?;
                Some(CustomValue::Number(f))
            }
            other => {
                return Err(ValidationError::new(
                    &path,
                    ValidationReason::WrongType {
                        expected: field.kind,
                        got: shorten(&other.to_string()),
                    },
                ))
            }
        };
        Ok((field.id, typed))
    }
}

impl CustomField {
    /// Checks a textual value (a CSV cell, a JSON string) against the
    /// field's type; an empty string is "no value".
    pub fn check_str(&self, raw: &str) -> Result<Option<CustomValue>, ValidationReason> {
        let s = raw.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let wrong = || ValidationReason::WrongType {
            expected: self.kind,
            got: shorten(s),
        };
        Ok(Some(match self.kind {
            CustomFieldKind::Text => {
                if s.len() > MAX_TEXT_LEN {
                    return Err(ValidationReason::TooLong(MAX_TEXT_LEN));
                }
                CustomValue::Text(s.to_string())
            }
            CustomFieldKind::Number => {
                let f: f64 = s.parse().map_err(|_| wrong())?;
                if !f.is_finite() {
                    return Err(ValidationReason::NotFinite);
                }
                CustomValue::Number(f)
            }
            CustomFieldKind::Date => {
                CustomValue::Date(NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| wrong())?)
            }
            CustomFieldKind::Datetime => CustomValue::Datetime(
                DateTime::parse_from_rfc3339(s)
                    .map_err(|_| wrong())?
                    .with_timezone(&Utc),
            ),
            CustomFieldKind::Choices => {
                // Stored in the choice's own spelling so views compare alike.
                let choice = self
                    .choices
                    .iter()
                    .find(|c| c.eq_ignore_ascii_case(s))
                    .ok_or_else(|| ValidationReason::NotAChoice {
                        got: shorten(s),
                        choices: self.choices.clone(),
                    })?;
                CustomValue::Text(choice.clone())
            }
        }))
    }
}

/// A typed custom value. JSON: text and choices as strings, numbers as
/// numbers, dates as `YYYY-MM-DD`, datetimes as RFC 3339 strings.
#[derive(Debug, Clone, PartialEq)]
pub enum CustomValue {
    /// A text or choices value (column `value_text`).
    Text(String),
    /// A number (column `value_num`).
    Number(f64),
    /// A date (column `value_ms`, midnight UTC).
    Date(NaiveDate),
    /// An instant (column `value_ms`).
    Datetime(DateTime<Utc>),
}

impl CustomValue {
    /// The `(value_text, value_num, value_ms)` columns of `lead_custom_values`.
    pub fn columns(&self) -> (Option<&str>, Option<f64>, Option<i64>) {
        match self {
            CustomValue::Text(s) => (Some(s), None, None),
            CustomValue::Number(n) => (None, Some(*n), None),
            CustomValue::Date(d) => (
                None,
                None,
                d.and_hms_opt(0, 0, 0)
                    .map(|t| t.and_utc().timestamp_millis()),
            ),
            CustomValue::Datetime(t) => (None, None, Some(t.timestamp_millis())),
        }
    }

    /// Reads the columns back for a field of `kind`.
    pub fn from_columns(
        kind: CustomFieldKind,
        text: Option<String>,
        num: Option<f64>,
        ms: Option<i64>,
    ) -> Option<CustomValue> {
        match kind {
            CustomFieldKind::Text | CustomFieldKind::Choices => text.map(CustomValue::Text),
            CustomFieldKind::Number => num.map(CustomValue::Number),
            CustomFieldKind::Date => ms.map(|ms| CustomValue::Date(ms_to_time(ms).date_naive())),
            CustomFieldKind::Datetime => ms.map(|ms| CustomValue::Datetime(ms_to_time(ms))),
        }
    }
}

/// The OpenAPI schema of a custom value (SPEC §4 lead `custom`): a string
/// (text, choices, `YYYY-MM-DD` date, RFC 3339 datetime) or a number.
impl utoipa::PartialSchema for CustomValue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .description(Some(
                "text and choices as strings, numbers as numbers, dates as YYYY-MM-DD, \
                 datetimes as RFC 3339 strings",
            ))
            .into()
    }
}

impl utoipa::ToSchema for CustomValue {}

impl Serialize for CustomValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CustomValue::Text(t) => s.serialize_str(t),
            CustomValue::Number(n) => s.serialize_f64(*n),
            CustomValue::Date(d) => s.serialize_str(&d.format("%Y-%m-%d").to_string()),
            CustomValue::Datetime(t) => {
                s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
            }
        }
    }
}

/// A contact of a lead: a person, their phone numbers, first first (R2
/// dials the first phone of the first contact), and their email addresses.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Contact {
    /// The person's name, possibly empty.
    pub name: String,
    /// E.164 numbers in the order given.
    #[schema(value_type = Vec<String>)]
    pub phones: Vec<PhoneE164>,
    /// Email addresses in the order given (shown to the agent; never dialed).
    pub emails: Vec<String>,
}

/// Longest email address accepted (RFC 5321 §4.5.3.1.3: a path of 256
/// octets, less its angle brackets).
pub const MAX_EMAIL_LEN: usize = 254;

/// Checks an email address as people write them: one `@` with something
/// before it and a dotted domain after it, no spaces; returns it trimmed.
pub fn check_email(raw: &str) -> Result<String, ValidationReason> {
    let t = raw.trim();
    if t.len() > MAX_EMAIL_LEN {
        return Err(ValidationReason::TooLong(MAX_EMAIL_LEN));
    }
    let ok = match t.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !t.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    };
    if ok {
        Ok(t.to_string())
    } else {
        Err(ValidationReason::BadEmail(t.chars().take(40).collect()))
    }
}

/// The three opportunity status types of SPEC §3 (`status_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum OpportunityStatus {
    /// Still open.
    Active,
    /// Closed, won.
    Won,
    /// Closed, lost.
    Lost,
}

impl OpportunityStatus {
    /// The database's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OpportunityStatus::Active => "Active",
            OpportunityStatus::Won => "Won",
            OpportunityStatus::Lost => "Lost",
        }
    }

    /// Reads a status type, ignoring case (`lost`, `Lost`).
    pub fn parse(s: &str) -> Option<OpportunityStatus> {
        match s.trim().to_ascii_lowercase().as_str() {
            "active" => Some(OpportunityStatus::Active),
            "won" => Some(OpportunityStatus::Won),
            "lost" => Some(OpportunityStatus::Lost),
            _ => None,
        }
    }
}

/// An opportunity of a lead (SPEC §4 `{status_type, created, value}`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Opportunity {
    /// Database id.
    pub id: i64,
    /// Active, Won or Lost.
    pub status_type: OpportunityStatus,
    /// When it was created.
    #[serde(with = "rfc3339")]
    pub created: DateTime<Utc>,
    /// Its value, if known.
    pub value: Option<f64>,
}

/// A stored lead, the JSON shape of SPEC §4.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Lead {
    /// Database id.
    pub id: i64,
    /// Company or person name.
    pub name: String,
    /// Lead status (`Potential`, `Bad Fit`, …), free text.
    pub status: String,
    /// When the lead was created (imports keep their own date).
    #[serde(with = "rfc3339")]
    pub created: DateTime<Utc>,
    /// Last change through the API or an import.
    #[serde(with = "rfc3339")]
    pub updated: DateTime<Utc>,
    /// Contacts, first first.
    pub contacts: Vec<Contact>,
    /// Custom field values by field name; fields without a value are absent.
    /// Text and choices as strings, numbers as numbers, dates as
    /// `YYYY-MM-DD`, datetimes as RFC 3339 strings.
    pub custom: BTreeMap<String, CustomValue>,
    /// Opportunities, oldest first.
    pub opportunities: Vec<Opportunity>,
    /// Marked "do not call": never dialed, like a number on the
    /// do-not-call list (the dialer's outcome is `restricted`, a manual
    /// call for this lead gets 403).
    pub do_not_call: bool,
}

impl Lead {
    /// The number the dialer calls (R2): the first phone of the first contact.
    pub fn first_phone(&self) -> Option<&PhoneE164> {
        self.contacts.first().and_then(|c| c.phones.first())
    }
}

/// A contact as given in a request: phones as written, normalised on
/// validation.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewContact {
    /// The person's name.
    #[serde(default)]
    pub name: String,
    /// Numbers as written (`(415) 555-0134`).
    #[serde(default)]
    pub phones: Vec<String>,
    /// Email addresses (`ann@example.com`).
    #[serde(default)]
    pub emails: Vec<String>,
}

/// An opportunity as given in a request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOpportunity {
    /// Active, Won or Lost.
    pub status_type: OpportunityStatus,
    /// When it was created; now when absent.
    #[serde(default, with = "rfc3339::option")]
    pub created: Option<DateTime<Utc>>,
    /// Its value.
    #[serde(default)]
    pub value: Option<f64>,
}

/// A lead as given to `POST /api/v1/leads` or by a CSV row.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLead {
    /// Company or person name; required.
    #[schema(min_length = 1, pattern = r"\S")]
    pub name: String,
    /// Lead status; empty when absent.
    #[serde(default)]
    pub status: String,
    /// Creation time; now when absent (SPEC §4).
    #[serde(default, with = "rfc3339::option")]
    pub created: Option<DateTime<Utc>>,
    /// Contacts, first first.
    #[serde(default)]
    pub contacts: Vec<NewContact>,
    /// Custom values by field name (JSON of the field's type).
    #[serde(default)]
    pub custom: BTreeMap<String, serde_json::Value>,
    /// Opportunities.
    #[serde(default)]
    pub opportunities: Vec<NewOpportunity>,
    /// Marked "do not call" (never dialed).
    #[serde(default)]
    pub do_not_call: bool,
}

/// A lead checked against the custom fields and normalised, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidLead {
    /// Trimmed name.
    pub name: String,
    /// Trimmed status.
    pub status: String,
    /// Creation time in epoch ms.
    pub created_ms: i64,
    /// Contacts with E.164 phones.
    pub contacts: Vec<Contact>,
    /// `(field id, value)` pairs; fields without a value are left out.
    pub custom: Vec<(i64, CustomValue)>,
    /// `(status_type, created_ms, value)`.
    pub opportunities: Vec<ValidOpportunity>,
    /// Marked "do not call".
    pub do_not_call: bool,
}

/// An opportunity ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidOpportunity {
    /// Active, Won or Lost.
    pub status_type: OpportunityStatus,
    /// Creation time in epoch ms.
    pub created_ms: i64,
    /// Its value.
    pub value: Option<f64>,
}

fn check_text(field: &str, s: &str, required: bool) -> Result<String, ValidationError> {
    let t = s.trim();
    if required && t.is_empty() {
        return Err(ValidationError::new(field, ValidationReason::Empty));
    }
    if t.len() > MAX_TEXT_LEN {
        return Err(ValidationError::new(
            field,
            ValidationReason::TooLong(MAX_TEXT_LEN),
        ));
    }
    Ok(t.to_string())
}

fn validate_contacts(
    contacts: &[NewContact],
    region: &str,
) -> Result<Vec<Contact>, ValidationError> {
    let mut out = Vec::with_capacity(contacts.len());
    for (i, c) in contacts.iter().enumerate() {
        let name = check_text(&format!("contacts[{i}].name"), &c.name, false)?;
        let mut phones = Vec::with_capacity(c.phones.len());
        for (j, raw) in c.phones.iter().enumerate() {
            let p = PhoneE164::parse(raw, region)
                .map_err(|e| ValidationError::new(format!("contacts[{i}].phones[{j}]"), e))?;
            phones.push(p);
        }
        let mut emails = Vec::with_capacity(c.emails.len());
        for (j, raw) in c.emails.iter().enumerate() {
            emails.push(
                check_email(raw)
                    .map_err(|e| ValidationError::new(format!("contacts[{i}].emails[{j}]"), e))?,
            );
        }
        out.push(Contact {
            name,
            phones,
            emails,
        });
    }
    Ok(out)
}

fn validate_opportunities(
    opps: &[NewOpportunity],
    now: DateTime<Utc>,
) -> Result<Vec<ValidOpportunity>, ValidationError> {
    opps.iter()
        .enumerate()
        .map(|(i, o)| {
            if o.value.is_some_and(|v| !v.is_finite()) {
                return Err(ValidationError::new(
                    format!("opportunities[{i}].value"),
                    ValidationReason::NotFinite,
                ));
            }
            Ok(ValidOpportunity {
                status_type: o.status_type,
                created_ms: time_to_ms(o.created.unwrap_or(now)),
                value: o.value,
            })
        })
        .collect()
}

fn validate_custom(
    custom: &BTreeMap<String, serde_json::Value>,
    fields: &CustomFieldSet,
) -> Result<Vec<(i64, Option<CustomValue>)>, ValidationError> {
    custom
        .iter()
        .map(|(name, value)| fields.check_json(name, value))
        .collect()
}

impl NewLead {
    /// Validates and normalises the lead: name required, phones to E.164 in
    /// `region` (`[leads] default_region`), custom values against their
    /// field's type, `created` defaulting to `now` (SPEC §4).
    pub fn validate(
        &self,
        fields: &CustomFieldSet,
        region: &str,
        now: DateTime<Utc>,
    ) -> Result<ValidLead, ValidationError> {
        Ok(ValidLead {
            name: check_text("name", &self.name, true)?,
            status: check_text("status", &self.status, false)?,
            created_ms: time_to_ms(self.created.unwrap_or(now)),
            contacts: validate_contacts(&self.contacts, region)?,
            custom: validate_custom(&self.custom, fields)?
                .into_iter()
                .filter_map(|(id, v)| v.map(|v| (id, v)))
                .collect(),
            opportunities: validate_opportunities(&self.opportunities, now)?,
            do_not_call: self.do_not_call,
        })
    }
}

/// A partial update (`PATCH /api/v1/leads/{id}`): absent keys are kept;
/// `contacts` and `opportunities` replace the lists; `custom` merges, with
/// `null` or `""` removing a value.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeadPatch {
    /// New name.
    #[schema(min_length = 1, pattern = r"\S")]
    pub name: Option<String>,
    /// New status.
    pub status: Option<String>,
    /// New creation time.
    #[serde(default, with = "rfc3339::option")]
    pub created: Option<DateTime<Utc>>,
    /// Replacement contacts.
    pub contacts: Option<Vec<NewContact>>,
    /// Custom values to set or (null) remove.
    pub custom: Option<BTreeMap<String, serde_json::Value>>,
    /// Replacement opportunities.
    pub opportunities: Option<Vec<NewOpportunity>>,
    /// `true` marks the lead "do not call" (never dialed), `false` clears it.
    pub do_not_call: Option<bool>,
}

/// A validated patch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValidPatch {
    /// New name.
    pub name: Option<String>,
    /// New status.
    pub status: Option<String>,
    /// New creation time, epoch ms.
    pub created_ms: Option<i64>,
    /// Replacement contacts.
    pub contacts: Option<Vec<Contact>>,
    /// `(field id, Some(value) to set | None to remove)`.
    pub custom: Vec<(i64, Option<CustomValue>)>,
    /// Replacement opportunities.
    pub opportunities: Option<Vec<ValidOpportunity>>,
    /// New "do not call" mark.
    pub do_not_call: Option<bool>,
}

impl LeadPatch {
    /// Validates like [`NewLead::validate`], field by field.
    pub fn validate(
        &self,
        fields: &CustomFieldSet,
        region: &str,
        now: DateTime<Utc>,
    ) -> Result<ValidPatch, ValidationError> {
        Ok(ValidPatch {
            name: self
                .name
                .as_deref()
                .map(|n| check_text("name", n, true))
                .transpose()?,
            status: self
                .status
                .as_deref()
                .map(|s| check_text("status", s, false))
                .transpose()?,
            created_ms: self.created.map(time_to_ms),
            contacts: self
                .contacts
                .as_deref()
                .map(|c| validate_contacts(c, region))
                .transpose()?,
            custom: match &self.custom {
                Some(c) => validate_custom(c, fields)?,
                None => Vec::new(),
            },
            opportunities: self
                .opportunities
                .as_deref()
                .map(|o| validate_opportunities(o, now))
                .transpose()?,
            do_not_call: self.do_not_call,
        })
    }
}

/// The outcome of a call (SPEC §4 call record; R8–R12).
pub use crate::call::Outcome as CallOutcome;

/// A stored call (SPEC §4 call record); dialer, manual (R17) and logged calls.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CallRecord {
    /// Database id.
    pub id: i64,
    /// The dialer session, if the dialer made it.
    pub session_id: Option<i64>,
    /// The lead called, if known (null once the lead is deleted).
    pub lead_id: Option<i64>,
    /// The agent's username.
    pub agent: Option<String>,
    /// The number dialled, E.164 when known.
    pub number: String,
    /// INVITE sent (or the logged call's `created`).
    #[serde(with = "rfc3339")]
    pub started_at: DateTime<Utc>,
    /// 200 OK received.
    #[serde(with = "rfc3339::option")]
    pub answered_at: Option<DateTime<Utc>>,
    /// BYE, CANCEL or failure.
    #[serde(with = "rfc3339::option")]
    pub ended_at: Option<DateTime<Utc>>,
    /// The outcome once known.
    pub outcome: Option<CallOutcome>,
    /// Final SIP status of the lead leg.
    pub sip_status: Option<u16>,
    /// Ringing time in ms.
    pub ring_ms: Option<i64>,
    /// The agent's notes on the call (SPEC §1 step 5), `null` until saved.
    pub notes: Option<String>,
    /// The `[[trunk]] name` that carried the call (the last one tried after
    /// a failover); `null` for calls that never reached a trunk.
    pub trunk: Option<String>,
    /// The caller ID the lead was shown in From and P-Asserted-Identity:
    /// the local-presence choice from `dialer.caller_id_pool`, else the
    /// session's `caller_id`, else the trunk's; `null` for calls that
    /// never reached a trunk and for callbacks.
    pub caller_id: Option<String>,
    /// What answered, by answering-machine detection (SPEC §4): `human`,
    /// `machine` or `not_sure`; `null` when the session's `amd` is off.
    #[schema(value_type = Option<crate::media::amd::Verdict>)]
    pub amd: Option<crate::media::amd::Verdict>,
    /// From the lead's 200 OK to the detector's verdict, ms.
    pub amd_ms: Option<i64>,
    /// Whether the call was recorded (`GET /api/v1/calls/{id}/recording`).
    pub recorded: bool,
}

/// A call to store: everything of [`CallRecord`] but the id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCall {
    /// The dialer session.
    pub session_id: Option<i64>,
    /// The lead called.
    pub lead_id: Option<i64>,
    /// The agent's username.
    pub agent: Option<String>,
    /// The number dialled.
    pub number: String,
    /// Start, epoch ms; `leads.last_call_ms` follows it.
    pub started_ms: i64,
    /// Answer, epoch ms.
    pub answered_ms: Option<i64>,
    /// End, epoch ms.
    pub ended_ms: Option<i64>,
    /// The outcome once known.
    pub outcome: Option<CallOutcome>,
    /// Final SIP status.
    pub sip_status: Option<u16>,
    /// Ringing time in ms.
    pub ring_ms: Option<i64>,
    /// The trunk the call goes to.
    pub trunk: Option<String>,
}

/// The later facts of a call stored at its start (`Store::finish_call`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CallEnd {
    /// Answer, epoch ms.
    pub answered_ms: Option<i64>,
    /// End, epoch ms.
    pub ended_ms: Option<i64>,
    /// The outcome.
    pub outcome: Option<CallOutcome>,
    /// Final SIP status.
    pub sip_status: Option<u16>,
    /// Ringing time in ms.
    pub ring_ms: Option<i64>,
    /// The trunk that carried the call (after a failover, the last one).
    pub trunk: Option<String>,
    /// The caller ID the lead was shown (From / P-Asserted-Identity).
    pub caller_id: Option<String>,
    /// Answering-machine detection's verdict (SPEC §4).
    pub amd: Option<crate::media::amd::Verdict>,
    /// From the answer to the verdict, ms.
    pub amd_ms: Option<i64>,
    /// The recording's file name under `<data_dir>/recordings/`.
    pub recording: Option<String>,
}

/// Input of `POST /api/v1/leads/{id}/calls`: a call made elsewhere (SPEC §4).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoggedCall {
    /// When the call started.
    #[serde(with = "rfc3339")]
    pub created: DateTime<Utc>,
    /// How it ended.
    pub outcome: CallOutcome,
    /// How long it lasted, seconds.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub duration_s: f64,
    /// The number called; the lead's first phone when absent.
    #[serde(default)]
    pub number: Option<String>,
}

impl LoggedCall {
    /// The call to store for lead `lead_id`: it counts for `called` and
    /// `latest_call_created` like a dialer call (SPEC §4).
    pub fn to_new_call(&self, lead_id: i64, number: String) -> Result<NewCall, ValidationError> {
        if !self.duration_s.is_finite() || self.duration_s < 0.0 || self.duration_s > 1.0e7 {
            return Err(ValidationError::new(
                "duration_s",
                ValidationReason::NotFinite,
            ));
        }
        let started_ms = time_to_ms(self.created);
        let ended_ms = started_ms + (self.duration_s * 1000.0).round() as i64;
        Ok(NewCall {
            session_id: None,
            lead_id: Some(lead_id),
            agent: None,
            number,
            started_ms,
            answered_ms: (self.outcome == CallOutcome::Answered).then_some(started_ms),
            ended_ms: Some(ended_ms),
            outcome: Some(self.outcome),
            sip_status: None,
            ring_ms: None,
            trunk: None,
        })
    }
}

/// A stored Smart View: a name and its query text (SPEC §3).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SmartView {
    /// Database id.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// The query, as written.
    pub query: String,
    /// When it was created.
    #[serde(with = "rfc3339")]
    pub created: DateTime<Utc>,
}

/// Input of `POST /api/v1/smart-views`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSmartView {
    /// Display name.
    #[schema(min_length = 1, pattern = r"\S")]
    pub name: String,
    /// The query text.
    #[serde(default)]
    pub query: String,
}

/// A registrar binding (RFC 3261 §10.3), as persisted in `registrations`.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// Address of record: the agent's username.
    pub aor: String,
    /// The Contact URI as registered.
    pub contact: String,
    /// Wall-clock expiry, epoch ms.
    pub expires_ms: i64,
    /// Call-ID of the REGISTER that made or refreshed it (§10.3 step 7).
    pub call_id: String,
    /// Its CSeq.
    pub cseq: i64,
    /// The Contact's q value.
    pub q: Option<f64>,
    /// `udp` or `tcp`: how the REGISTER arrived.
    pub transport: String,
    /// `ip:port` it came from (rport).
    pub source: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields() -> CustomFieldSet {
        CustomFieldSet::new(vec![
            CustomField {
                id: 1,
                name: "Lead Source".into(),
                kind: CustomFieldKind::Choices,
                choices: vec!["Leadgen Team".into(), "Website".into()],
            },
            CustomField {
                id: 2,
                name: "Next Call Date".into(),
                kind: CustomFieldKind::Date,
                choices: vec![],
            },
            CustomField {
                id: 3,
                name: "Seats".into(),
                kind: CustomFieldKind::Number,
                choices: vec![],
            },
            CustomField {
                id: 4,
                name: "Demo At".into(),
                kind: CustomFieldKind::Datetime,
                choices: vec![],
            },
        ])
    }

    fn now() -> DateTime<Utc> {
        parse_time("2026-11-01T12:00:00Z").unwrap()
    }

    #[test]
    fn custom_values_are_checked_against_their_type() {
        let f = fields();
        assert_eq!(
            f.check_json("lead source", &json!("leadgen team")).unwrap(),
            (1, Some(CustomValue::Text("Leadgen Team".into())))
        );
        assert!(matches!(
            f.check_json("Lead Source", &json!("Cold"))
                .unwrap_err()
                .reason,
            ValidationReason::NotAChoice { .. }
        ));
        assert_eq!(
            f.check_json("Next Call Date", &json!("")).unwrap(),
            (2, None)
        );
        assert!(matches!(
            f.check_json("Next Call Date", &json!("31/12/2026"))
                .unwrap_err()
                .reason,
            ValidationReason::WrongType { .. }
        ));
        assert_eq!(
            f.check_json("Seats", &json!(12)).unwrap(),
            (3, Some(CustomValue::Number(12.0)))
        );
        assert!(f.check_json("Seats", &json!("twelve")).is_err());
        assert!(f.check_json("Seats", &json!(true)).is_err());
        assert!(f
            .check_json("Demo At", &json!("2026-11-02T09:30:00+01:00"))
            .is_ok());
        assert!(f.check_json("Demo At", &json!("2026-11-02")).is_err());
        assert_eq!(
            f.check_json("Nope", &json!("x")).unwrap_err().field,
            "custom.Nope"
        );
    }

    #[test]
    fn new_lead_validates_and_names_the_field() {
        let lead: NewLead = serde_json::from_value(json!({
            "name": " Acme ",
            "status": "Potential",
            "contacts": [{"name": "Ann", "phones": ["(415) 555-0134"]}],
            "custom": {"Lead Source": "Website", "Next Call Date": "2026-11-03"},
            "opportunities": [{"status_type": "Lost", "created": "2026-03-01", "value": 100}]
        }))
        .unwrap();
        let v = lead.validate(&fields(), "US", now()).unwrap();
        assert_eq!(v.name, "Acme");
        assert_eq!(v.created_ms, time_to_ms(now()));
        assert_eq!(v.contacts[0].phones[0].as_str(), "+14155550134");
        assert_eq!(v.custom.len(), 2);

        let bad: NewLead = serde_json::from_value(json!({
            "name": "Acme",
            "contacts": [{"phones": ["+14155550134", "garbage"]}]
        }))
        .unwrap();
        let e = bad.validate(&fields(), "US", now()).unwrap_err();
        assert_eq!(e.field, "contacts[0].phones[1]");

        let unnamed: NewLead = serde_json::from_value(json!({"name": "  "})).unwrap();
        assert_eq!(
            unnamed.validate(&fields(), "US", now()).unwrap_err().field,
            "name"
        );
    }

    #[test]
    fn email_addresses_are_checked_as_people_write_them() {
        assert_eq!(
            check_email("  ann@acme.example ").as_deref(),
            Ok("ann@acme.example")
        );
        assert!(check_email("ann.o'neil+sales@mail.acme.co.uk").is_ok());
        for bad in [
            "",
            "ann",
            "@acme.example",
            "ann@",
            "ann@acme",
            "ann@@acme.example",
            "ann smith@acme.example",
            "ann@.example",
            "ann@acme.",
        ] {
            assert!(check_email(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}@acme.example", "a".repeat(250));
        assert_eq!(
            check_email(&long),
            Err(ValidationReason::TooLong(MAX_EMAIL_LEN))
        );
    }

    #[test]
    fn lead_serialises_to_the_spec_shape() {
        let lead = Lead {
            id: 7,
            name: "Acme".into(),
            status: "Potential".into(),
            created: now(),
            updated: now(),
            contacts: vec![Contact {
                name: "Ann".into(),
                phones: vec![PhoneE164::from_e164("+14155550134").unwrap()],
                emails: vec!["ann@acme.example".into()],
            }],
            custom: [(
                "Next Call Date".to_string(),
                CustomValue::Date(now().date_naive()),
            )]
            .into_iter()
            .collect(),
            opportunities: vec![],
            do_not_call: false,
        };
        let v = serde_json::to_value(&lead).unwrap();
        assert_eq!(v["created"], "2026-11-01T12:00:00.000Z");
        assert_eq!(v["contacts"][0]["phones"][0], "+14155550134");
        assert_eq!(v["contacts"][0]["emails"][0], "ann@acme.example");
        assert_eq!(v["custom"]["Next Call Date"], "2026-11-01");
    }

    #[test]
    fn times_accept_dates_and_rfc3339() {
        assert_eq!(
            parse_time("2026-05-01").unwrap(),
            parse_time("2026-05-01T00:00:00Z").unwrap()
        );
        assert!(parse_time("yesterday").is_err());
        assert_eq!(ms_to_time(time_to_ms(now())), now());
    }
}
