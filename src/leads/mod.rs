//! Leads: the model and its validation, phone numbers in E.164, and the
//! streaming CSV import (SPEC §4). The Smart View language lives in
//! `leads::query`.

pub mod dnc;
pub mod import;
pub mod model;
pub mod phone;
pub mod query;
pub mod zone;

pub use import::{
    import_csv, import_csv_file, import_csv_with, ImportError, ImportOptions, ImportReport,
    RowFailure,
};
pub use model::{
    CallOutcome, CallRecord, Contact, CustomField, CustomFieldKind, CustomFieldSet, CustomValue,
    Lead, LeadPatch, NewCall, NewContact, NewCustomField, NewLead, NewOpportunity, NewSmartView,
    Opportunity, OpportunityStatus, Registration, SmartView, ValidLead, ValidationError,
};
pub use phone::{PhoneE164, PhoneError};
