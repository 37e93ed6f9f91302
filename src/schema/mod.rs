//! Validation and normalisation of vaccination records and batch headers.
//!
//! Owns: the record rules (required fields, BSN eleven test, name and lot limits,
//! dates, products, countries, consent and PII), the batch-header rules, and the
//! [`Finding`]s they produce. The stable codes live in [`codes`], the product table
//! in [`products`], the country tables in [`countries`].
//! Must not: do any I/O. No clock (the caller passes `today`), no files, no
//! logging, and never a submitted value in a message: findings travel back to the
//! supplier and into logs, and records carry BSNs and names.
//! Called by: the intake service (per record, on the hot path: a valid record
//! costs no allocation) and the offline `validate` CLI.

pub mod codes;
pub mod countries;
pub mod products;

pub use codes::Code;

use crate::proto::{
    Action, AgeBand, BatchHeader, Consent, OrganizationIdType, Patient, Performer, PerformerType,
    Vaccination, VaccinationRecord,
};
use time::format_description::well_known::Rfc3339;
use time::macros::date;
use time::{Date, Month, OffsetDateTime};

/// Longest message id (and refers_to), in characters.
pub const MAX_MESSAGE_ID_CHARS: usize = 64;
/// Longest name part (given names, infix, family name), in Unicode scalar values.
pub const MAX_NAME_CHARS: usize = 50;
/// Longest lot number, in Unicode scalar values.
pub const MAX_LOT_NUMBER_CHARS: usize = 50;
/// Longest batch id and source system, in characters.
pub const MAX_HEADER_ID_CHARS: usize = 128;
/// Longest file name, in characters.
pub const MAX_FILE_NAME_CHARS: usize = 255;

/// Tunable rules; Default gives the production values.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Vaccination dates before this are rejected. Default 2021-01-06.
    pub campaign_start: Date,
    /// Max records per batch. Default 10_000.
    pub max_records_per_batch: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            campaign_start: date!(2021 - 01 - 06),
            max_records_per_batch: 10_000,
        }
    }
}

/// How bad a finding is: an error rejects the record, a warning does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The record is rejected.
    Error,
    /// The record is accepted; the supplier should still look.
    Warning,
}

impl From<Severity> for crate::proto::Severity {
    fn from(s: Severity) -> Self {
        match s {
            Severity::Error => crate::proto::Severity::Error,
            Severity::Warning => crate::proto::Severity::Warning,
        }
    }
}

/// One problem with one field. `message` never contains the submitted value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Path of the field, e.g. "patient.bsn".
    pub field: &'static str,
    /// The stable code.
    pub code: Code,
    /// Error (rejects the record) or warning.
    pub severity: Severity,
    /// A short English sentence for the supplier; never the submitted value.
    pub message: String,
}

/// A problem with the batch as a whole: the whole batch is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct BatchProblem {
    /// The stable code.
    pub code: Code,
    /// Path of the field, e.g. "header.batch_id".
    pub field: &'static str,
    /// A short English sentence for the supplier.
    pub message: String,
}

/// true if any finding is an error.
pub fn is_rejected(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Error)
}

/// The product with this HPK code.
pub fn product_by_hpk(code: &str) -> Option<&'static products::Product> {
    products::by_hpk(code)
}

/// The product with this EU product number.
pub fn product_by_eu_number(n: &str) -> Option<&'static products::Product> {
    products::by_eu_number(n)
}

/// BSN eleven test: 9 ASCII digits, not 000000000, 9*d1+8*d2+...+2*d8-d9 ≡ 0 mod 11.
pub fn bsn_is_valid(bsn: &str) -> bool {
    let b = bsn.as_bytes();
    if b.len() != 9 || !b.iter().all(u8::is_ascii_digit) || b.iter().all(|&c| c == b'0') {
        return false;
    }
    let mut sum: i32 = 0;
    for (weight, &c) in (2..=9).rev().zip(b.iter()) {
        sum += weight * i32::from(c - b'0');
    }
    sum -= b.get(8).map_or(0, |&c| i32::from(c - b'0'));
    sum.rem_euclid(11) == 0
}

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

/// Validates and normalises one record in place (alpha-3 country -> alpha-2, an
/// 8-digit BSN padded to 9 digits, uppercase country). Returns every finding; the
/// record is rejected iff any finding has Severity::Error. `today` is the latest
/// date a vaccination may have (the caller computes it; schema reads no clock).
///
/// Without consent GIVEN the `patient` is removed (set to `None`) so that nothing
/// identifying survives in the record.
pub fn validate_record(record: &mut VaccinationRecord, rules: &Rules, today: Date) -> Vec<Finding> {
    let mut out = Vec::new();
    check_identity(record, &mut out);
    let birth = check_subject(record, today, &mut out);
    match record.vaccination.as_mut() {
        None => error(
            &mut out,
            "vaccination",
            Code::MissingField,
            "vaccination is required",
        ),
        Some(v) => check_vaccination(v, rules, today, birth, &mut out),
    }
    match record.performer.as_ref() {
        None => error(
            &mut out,
            "performer",
            Code::MissingField,
            "performer is required",
        ),
        Some(p) => check_performer(p, &mut out),
    }
    out
}

fn push(out: &mut Vec<Finding>, field: &'static str, code: Code, severity: Severity, msg: &str) {
    out.push(Finding {
        field,
        code,
        severity,
        message: msg.to_owned(),
    });
}

fn error(out: &mut Vec<Finding>, field: &'static str, code: Code, msg: &str) {
    push(out, field, code, Severity::Error, msg);
}

fn warning(out: &mut Vec<Finding>, field: &'static str, code: Code, msg: &str) {
    push(out, field, code, Severity::Warning, msg);
}

/// More than `max` Unicode scalar values (cheap when the byte length is within it).
fn longer_than(s: &str, max: usize) -> bool {
    s.len() > max && s.chars().count() > max
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// message_id / refers_to: at most 64 characters, printable ASCII without spaces.
fn check_message_id(value: &str, field: &'static str, out: &mut Vec<Finding>) {
    if longer_than(value, MAX_MESSAGE_ID_CHARS) {
        let msg = if field == "refers_to" {
            "refers_to is longer than 64 characters"
        } else {
            "message_id is longer than 64 characters"
        };
        error(out, field, Code::MessageIdTooLong, msg);
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        let msg = if field == "refers_to" {
            "refers_to may only contain printable ASCII characters without spaces"
        } else {
            "message_id may only contain printable ASCII characters without spaces"
        };
        error(out, field, Code::InvalidCharacters, msg);
    }
}

fn check_identity(record: &VaccinationRecord, out: &mut Vec<Finding>) {
    if record.message_id.is_empty() {
        error(
            out,
            "message_id",
            Code::MissingField,
            "message_id is required",
        );
    } else {
        check_message_id(&record.message_id, "message_id", out);
    }
    let has_ref = !record.refers_to.is_empty();
    if has_ref {
        check_message_id(&record.refers_to, "refers_to", out);
        if record.refers_to == record.message_id {
            error(
                out,
                "refers_to",
                Code::RefersToSelf,
                "refers_to must name another record, not this record's own message_id",
            );
        }
    }
    match Action::try_from(record.action) {
        Ok(Action::Unspecified) => error(
            out,
            "action",
            Code::MissingField,
            "action is required (REGISTER, CORRECT or RETRACT)",
        ),
        Ok(Action::Register) => {
            if has_ref {
                error(
                    out,
                    "refers_to",
                    Code::RefersToUnexpected,
                    "a REGISTER record must not have refers_to; use CORRECT to replace a record",
                );
            }
        }
        Ok(Action::Correct | Action::Retract) => {
            if !has_ref {
                error(
                    out,
                    "refers_to",
                    Code::RefersToMissing,
                    "CORRECT and RETRACT need refers_to: the message_id of the record they replace",
                );
            }
        }
        Err(_) => error(
            out,
            "action",
            Code::InvalidValue,
            "action is not a known value (use REGISTER, CORRECT or RETRACT)",
        ),
    }
}

/// Consent, patient and anonymous subject. Returns the earliest possible birth
/// date when consent is GIVEN and the birth date is valid.
fn check_subject(
    record: &mut VaccinationRecord,
    today: Date,
    out: &mut Vec<Finding>,
) -> Option<Date> {
    match Consent::try_from(record.consent) {
        Ok(Consent::Given) => {
            if record.anonymous.is_some() {
                warning(
                    out,
                    "anonymous",
                    Code::AnonymousWithConsent,
                    "a record with consent GIVEN should not carry an anonymous subject; it is ignored",
                );
            }
            match record.patient.as_mut() {
                None => {
                    error(
                        out,
                        "patient",
                        Code::PatientMissing,
                        "consent is GIVEN but the record has no patient",
                    );
                    None
                }
                Some(p) => check_patient(p, today, out),
            }
        }
        Ok(Consent::NotGiven) => {
            if let Some(p) = record.patient.as_ref() {
                check_no_pii(p, out);
            }
            record.patient = None;
            match record
                .anonymous
                .as_ref()
                .map(|a| AgeBand::try_from(a.age_band))
            {
                None | Some(Ok(AgeBand::Unspecified)) => error(
                    out,
                    "anonymous.age_band",
                    Code::AgeBandMissing,
                    "consent is NOT_GIVEN: the anonymous subject's age band is required",
                ),
                Some(Ok(_)) => {}
                Some(Err(_)) => error(
                    out,
                    "anonymous.age_band",
                    Code::InvalidValue,
                    "age_band is not a known value",
                ),
            }
            None
        }
        Ok(Consent::Unspecified) => {
            error(
                out,
                "consent",
                Code::MissingField,
                "consent is required (GIVEN or NOT_GIVEN)",
            );
            record.patient = None;
            None
        }
        Err(_) => {
            error(
                out,
                "consent",
                Code::InvalidValue,
                "consent is not a known value (use GIVEN or NOT_GIVEN)",
            );
            record.patient = None;
            None
        }
    }
}

fn check_no_pii(p: &Patient, out: &mut Vec<Finding>) {
    let fields: [(&str, &'static str, &str); 5] = [
        (
            &p.bsn,
            "patient.bsn",
            "consent is NOT_GIVEN: the record must not contain a BSN; remove it",
        ),
        (
            &p.given_names,
            "patient.given_names",
            "consent is NOT_GIVEN: the record must not contain given names; remove them",
        ),
        (
            &p.infix,
            "patient.infix",
            "consent is NOT_GIVEN: the record must not contain a name infix; remove it",
        ),
        (
            &p.family_name,
            "patient.family_name",
            "consent is NOT_GIVEN: the record must not contain a family name; remove it",
        ),
        (
            &p.birth_date,
            "patient.birth_date",
            "consent is NOT_GIVEN: the record must not contain a birth date; send the age band only",
        ),
    ];
    for (value, field, msg) in fields {
        if !value.is_empty() {
            error(out, field, Code::PiiWithoutConsent, msg);
        }
    }
}

fn check_patient(p: &mut Patient, today: Date, out: &mut Vec<Finding>) -> Option<Date> {
    // BSN
    if p.bsn.is_empty() {
        error(
            out,
            "patient.bsn",
            Code::MissingField,
            "patient.bsn is required when consent is GIVEN",
        );
    } else {
        if p.bsn.len() == 8 && p.bsn.bytes().all(|b| b.is_ascii_digit()) {
            p.bsn.insert(0, '0');
        }
        let b = p.bsn.as_bytes();
        if b.len() != 9 || !b.iter().all(u8::is_ascii_digit) || b.iter().all(|&c| c == b'0') {
            error(
                out,
                "patient.bsn",
                Code::BsnFormat,
                "BSN must be 9 digits (8 digits are padded with a leading zero) and not all zeros",
            );
        } else if !bsn_is_valid(&p.bsn) {
            error(
                out,
                "patient.bsn",
                Code::BsnChecksum,
                "BSN fails the eleven test (elfproef)",
            );
        }
    }

    // Names
    if p.family_name.is_empty() {
        error(
            out,
            "patient.family_name",
            Code::MissingField,
            "patient.family_name is required when consent is GIVEN",
        );
    }
    check_name(&p.given_names, "patient.given_names", out);
    check_name(&p.infix, "patient.infix", out);
    check_name(&p.family_name, "patient.family_name", out);

    // Birth date
    if p.birth_date.is_empty() {
        error(
            out,
            "patient.birth_date",
            Code::MissingField,
            "patient.birth_date is required when consent is GIVEN",
        );
        return None;
    }
    match parse_birth_date(&p.birth_date) {
        None => {
            error(
                out,
                "patient.birth_date",
                Code::BirthDateFormat,
                "birth date must be a real date as YYYY-MM-DD; an unknown day may be XX, an unknown month XX-XX",
            );
            None
        }
        Some(earliest) => {
            if earliest > today {
                error(
                    out,
                    "patient.birth_date",
                    Code::BirthDateInFuture,
                    "birth date is in the future",
                );
            }
            Some(earliest)
        }
    }
}

fn check_name(value: &str, field: &'static str, out: &mut Vec<Finding>) {
    if longer_than(value, MAX_NAME_CHARS) {
        error(
            out,
            field,
            Code::NameTooLong,
            "name is longer than 50 characters",
        );
    }
    if has_control(value) {
        error(
            out,
            field,
            Code::InvalidCharacters,
            "name contains control characters",
        );
    }
}

fn check_vaccination(
    v: &mut Vaccination,
    rules: &Rules,
    today: Date,
    birth: Option<Date>,
    out: &mut Vec<Finding>,
) {
    // Product
    let by_hpk = if v.hpk_code.is_empty() {
        None
    } else {
        let p = product_by_hpk(&v.hpk_code);
        if p.is_none() {
            error(
                out,
                "vaccination.hpk_code",
                Code::UnknownProduct,
                "HPK code is not a known COVID-19 vaccine product",
            );
        }
        p
    };
    let by_eu = if v.eu_product_number.is_empty() {
        None
    } else {
        let p = product_by_eu_number(&v.eu_product_number);
        if p.is_none() {
            error(
                out,
                "vaccination.eu_product_number",
                Code::UnknownProduct,
                "EU product number is not a known COVID-19 vaccine product",
            );
        }
        p
    };
    if v.hpk_code.is_empty() && v.eu_product_number.is_empty() {
        error(
            out,
            "vaccination.hpk_code",
            Code::ProductMissing,
            "give an HPK code, an EU product number, or both",
        );
    }
    if let (Some(a), Some(b)) = (by_hpk, by_eu) {
        if a != b {
            warning(
                out,
                "vaccination.eu_product_number",
                Code::ProductMismatch,
                "HPK code and EU product number name different products; check which was given",
            );
        }
    }

    // Date
    if v.date.is_empty() {
        error(
            out,
            "vaccination.date",
            Code::MissingField,
            "vaccination.date is required",
        );
    } else {
        match parse_date(&v.date) {
            None => error(
                out,
                "vaccination.date",
                Code::VaccinationDateFormat,
                "vaccination date must be a real date as YYYY-MM-DD",
            ),
            Some(d) => {
                if d > today {
                    error(
                        out,
                        "vaccination.date",
                        Code::VaccinationDateInFuture,
                        "vaccination date is in the future",
                    );
                }
                if d < rules.campaign_start {
                    error(
                        out,
                        "vaccination.date",
                        Code::VaccinationDateBeforeCampaign,
                        "vaccination date is before the start of the COVID-19 vaccination campaign",
                    );
                }
                if birth.is_some_and(|b| d < b) {
                    error(
                        out,
                        "vaccination.date",
                        Code::VaccinationDateBeforeBirth,
                        "vaccination date is before the patient's birth date",
                    );
                }
            }
        }
    }

    // Doses
    if !(1..=9).contains(&v.dose_number) {
        error(
            out,
            "vaccination.dose_number",
            Code::DoseOutOfRange,
            "dose_number must be between 1 and 9",
        );
    }
    if !(1..=9).contains(&v.total_doses) {
        error(
            out,
            "vaccination.total_doses",
            Code::DoseOutOfRange,
            "total_doses must be between 1 and 9",
        );
    }

    // Lot number
    if v.lot_number.is_empty() {
        error(
            out,
            "vaccination.lot_number",
            Code::MissingField,
            "vaccination.lot_number is required",
        );
    } else {
        if longer_than(&v.lot_number, MAX_LOT_NUMBER_CHARS) {
            error(
                out,
                "vaccination.lot_number",
                Code::LotNumberTooLong,
                "lot number is longer than 50 characters",
            );
        }
        if has_control(&v.lot_number) {
            error(
                out,
                "vaccination.lot_number",
                Code::InvalidCharacters,
                "lot number contains control characters",
            );
        }
    }

    // Country
    let country = &mut v.country;
    if country.is_empty() {
        error(
            out,
            "vaccination.country",
            Code::MissingField,
            "vaccination.country is required",
        );
    } else if countries::is_alpha2(country) {
        country.make_ascii_uppercase();
    } else if let Some(alpha2) = countries::alpha3_to_alpha2(country) {
        country.clear();
        country.push_str(alpha2);
    } else {
        error(
            out,
            "vaccination.country",
            Code::CountryUnknown,
            "country must be an ISO 3166-1 alpha-2 code (\"NL\"); alpha-3 is converted",
        );
    }
}

fn is_eight_digits(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit())
}

fn check_performer(p: &Performer, out: &mut Vec<Finding>) {
    let org = p.organization_id.as_str();
    if org.is_empty() {
        error(
            out,
            "performer.organization_id",
            Code::MissingField,
            "performer.organization_id is required",
        );
    }
    match OrganizationIdType::try_from(p.id_type) {
        Ok(OrganizationIdType::Unspecified) => error(
            out,
            "performer.id_type",
            Code::MissingField,
            "performer.id_type is required (AGB or URA)",
        ),
        Ok(OrganizationIdType::Agb | OrganizationIdType::Ura) => {
            if !org.is_empty() && !is_eight_digits(org) {
                error(
                    out,
                    "performer.organization_id",
                    Code::OrganizationIdFormat,
                    "an AGB or URA code must be exactly 8 digits",
                );
            }
        }
        Err(_) => error(
            out,
            "performer.id_type",
            Code::InvalidValue,
            "performer.id_type is not a known value (use AGB or URA)",
        ),
    }
    match PerformerType::try_from(p.r#type) {
        Ok(PerformerType::Unspecified) => error(
            out,
            "performer.type",
            Code::MissingField,
            "performer.type is required",
        ),
        Ok(_) => {}
        Err(_) => error(
            out,
            "performer.type",
            Code::InvalidValue,
            "performer.type is not a known value",
        ),
    }
}

// ---------------------------------------------------------------------------
// Dates
// ---------------------------------------------------------------------------

/// The value of an all-ASCII-digit slice.
fn number(b: &[u8]) -> Option<u16> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u16, |n, &c| n * 10 + u16::from(c - b'0')))
}

/// Splits "YYYY-MM-DD" into its three parts (shape only).
fn split_date(s: &str) -> Option<(&[u8], &[u8], &[u8])> {
    let b = s.as_bytes();
    if b.len() != 10 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    Some((b.get(0..4)?, b.get(5..7)?, b.get(8..10)?))
}

fn make_date(year: u16, month: u16, day: u16) -> Option<Date> {
    let month = Month::try_from(u8::try_from(month).ok()?).ok()?;
    Date::from_calendar_date(i32::from(year), month, u8::try_from(day).ok()?).ok()
}

/// A strict "YYYY-MM-DD" real calendar date.
fn parse_date(s: &str) -> Option<Date> {
    let (y, m, d) = split_date(s)?;
    make_date(number(y)?, number(m)?, number(d)?)
}

/// A birth date "YYYY-MM-DD", "YYYY-MM-XX" or "YYYY-XX-XX"; returns the earliest
/// date it can mean.
fn parse_birth_date(s: &str) -> Option<Date> {
    let (y, m, d) = split_date(s)?;
    let year = number(y)?;
    match (m, d) {
        (b"XX", b"XX") => make_date(year, 1, 1),
        (b"XX", _) => None,
        (m, b"XX") => make_date(year, number(m)?, 1),
        (m, d) => make_date(year, number(m)?, number(d)?),
    }
}

// ---------------------------------------------------------------------------
// Batch header
// ---------------------------------------------------------------------------

fn problem(code: Code, field: &'static str, message: impl Into<String>) -> BatchProblem {
    BatchProblem {
        code,
        field,
        message: message.into(),
    }
}

/// Batch-level check: header present, batch_id present (<= 128 chars, no control chars),
/// source_system present (<= 128 chars, no control chars), record_count == actual,
/// actual > 0, actual <= rules.max_records_per_batch.
/// created_at may be empty; if present it must parse as RFC 3339 else HEADER_CREATED_AT_FORMAT.
/// file_name optional, <= 255 chars, no control chars.
/// Returns the first problem found, in that order.
pub fn validate_header(
    header: Option<&BatchHeader>,
    actual_records: usize,
    rules: &Rules,
) -> Result<(), BatchProblem> {
    let h = header.ok_or_else(|| {
        problem(
            Code::HeaderMissing,
            "header",
            "the batch has no header record",
        )
    })?;

    if h.batch_id.is_empty() {
        return Err(problem(
            Code::BatchIdMissing,
            "header.batch_id",
            "header.batch_id is required",
        ));
    }
    if longer_than(&h.batch_id, MAX_HEADER_ID_CHARS) {
        return Err(problem(
            Code::TooLong,
            "header.batch_id",
            "header.batch_id is longer than 128 characters",
        ));
    }
    if has_control(&h.batch_id) {
        return Err(problem(
            Code::InvalidCharacters,
            "header.batch_id",
            "header.batch_id contains control characters",
        ));
    }

    if h.source_system.is_empty() {
        return Err(problem(
            Code::SourceSystemMissing,
            "header.source_system",
            "header.source_system is required (product and version of the sending system)",
        ));
    }
    if longer_than(&h.source_system, MAX_HEADER_ID_CHARS) {
        return Err(problem(
            Code::TooLong,
            "header.source_system",
            "header.source_system is longer than 128 characters",
        ));
    }
    if has_control(&h.source_system) {
        return Err(problem(
            Code::InvalidCharacters,
            "header.source_system",
            "header.source_system contains control characters",
        ));
    }

    if !h.created_at.is_empty() && OffsetDateTime::parse(&h.created_at, &Rfc3339).is_err() {
        return Err(problem(
            Code::HeaderCreatedAtFormat,
            "header.created_at",
            "header.created_at must be an RFC 3339 timestamp, e.g. 2021-03-04T10:15:00Z",
        ));
    }

    if longer_than(&h.file_name, MAX_FILE_NAME_CHARS) {
        return Err(problem(
            Code::TooLong,
            "header.file_name",
            "header.file_name is longer than 255 characters",
        ));
    }
    if has_control(&h.file_name) {
        return Err(problem(
            Code::InvalidCharacters,
            "header.file_name",
            "header.file_name contains control characters",
        ));
    }

    if u64::try_from(actual_records).ok() != Some(u64::from(h.record_count)) {
        return Err(problem(
            Code::RecordCountMismatch,
            "header.record_count",
            format!(
                "header.record_count is {} but the batch holds {} records; the batch may be truncated",
                h.record_count, actual_records
            ),
        ));
    }
    if actual_records == 0 {
        return Err(problem(
            Code::BatchEmpty,
            "records",
            "the batch holds no records",
        ));
    }
    if actual_records > rules.max_records_per_batch {
        return Err(problem(
            Code::TooManyRecords,
            "records",
            format!(
                "the batch holds {} records; at most {} are allowed, split it",
                actual_records, rules.max_records_per_batch
            ),
        ));
    }
    Ok(())
}

/// For other modules' tests: known-valid records.
#[cfg(test)]
#[allow(unused_imports)]
pub(crate) use tests::{valid_anonymous_record, valid_record};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::AnonymousSubject;

    const TODAY: Date = date!(2021 - 06 - 01);

    /// A fully valid record with consent GIVEN: no findings for any `today` from 2021-03-04.
    pub(crate) fn valid_record() -> VaccinationRecord {
        VaccinationRecord {
            message_id: "msg-0001".into(),
            action: Action::Register as i32,
            refers_to: String::new(),
            consent: Consent::Given as i32,
            patient: Some(Patient {
                bsn: "249566758".into(),
                given_names: "Jan Pieter".into(),
                infix: "van der".into(),
                family_name: "Berg".into(),
                birth_date: "1950-05-17".into(),
            }),
            anonymous: None,
            vaccination: Some(Vaccination {
                hpk_code: "2924528".into(),
                eu_product_number: "EU/1/20/1528".into(),
                date: "2021-03-04".into(),
                dose_number: 1,
                total_doses: 2,
                lot_number: "EJ6795".into(),
                country: "NL".into(),
            }),
            performer: Some(Performer {
                organization_id: "01234567".into(),
                id_type: OrganizationIdType::Agb as i32,
                r#type: PerformerType::Gp as i32,
            }),
            is_test: false,
        }
    }

    /// A fully valid record with consent NOT_GIVEN.
    pub(crate) fn valid_anonymous_record() -> VaccinationRecord {
        VaccinationRecord {
            consent: Consent::NotGiven as i32,
            patient: None,
            anonymous: Some(AnonymousSubject {
                age_band: AgeBand::Age65AndOver as i32,
            }),
            ..valid_record()
        }
    }

    fn run(mut r: VaccinationRecord) -> (VaccinationRecord, Vec<Finding>) {
        let f = validate_record(&mut r, &Rules::default(), TODAY);
        (r, f)
    }

    fn findings(r: VaccinationRecord) -> Vec<Finding> {
        run(r).1
    }

    /// Exactly one finding, with this code and field, and it is an error.
    #[track_caller]
    fn assert_only_error(r: VaccinationRecord, code: Code, field: &str) {
        let f = findings(r);
        assert_eq!(f.len(), 1, "expected one finding, got {f:?}");
        assert_eq!(
            (f[0].code, f[0].field, f[0].severity),
            (code, field, Severity::Error)
        );
        assert!(is_rejected(&f));
    }

    #[track_caller]
    fn assert_has(f: &[Finding], code: Code, field: &str) {
        assert!(
            f.iter().any(|x| x.code == code && x.field == field),
            "no {code} on {field} in {f:?}"
        );
    }

    fn patient(r: &mut VaccinationRecord) -> &mut Patient {
        r.patient.as_mut().expect("patient")
    }

    fn vacc(r: &mut VaccinationRecord) -> &mut Vaccination {
        r.vaccination.as_mut().expect("vaccination")
    }

    fn perf(r: &mut VaccinationRecord) -> &mut Performer {
        r.performer.as_mut().expect("performer")
    }

    fn with(f: impl FnOnce(&mut VaccinationRecord)) -> VaccinationRecord {
        let mut r = valid_record();
        f(&mut r);
        r
    }

    // --- valid records ------------------------------------------------------

    #[test]
    fn valid_given_record_has_no_findings() {
        let (r, f) = run(valid_record());
        assert_eq!(f, vec![]);
        assert!(!is_rejected(&f));
        assert_eq!(r, valid_record(), "a valid normalised record is unchanged");
    }

    #[test]
    fn valid_not_given_record_has_no_findings() {
        let (r, f) = run(valid_anonymous_record());
        assert_eq!(f, vec![]);
        assert_eq!(r, valid_anonymous_record());
    }

    #[test]
    fn findings_vec_does_not_allocate_for_valid_record() {
        let f = findings(valid_record());
        assert_eq!(f.capacity(), 0);
    }

    #[test]
    fn rules_default() {
        let r = Rules::default();
        assert_eq!(r.campaign_start, date!(2021 - 01 - 06));
        assert_eq!(r.max_records_per_batch, 10_000);
    }

    #[test]
    fn severity_maps_to_proto() {
        assert_eq!(
            crate::proto::Severity::from(Severity::Error),
            crate::proto::Severity::Error
        );
        assert_eq!(
            crate::proto::Severity::from(Severity::Warning),
            crate::proto::Severity::Warning
        );
    }

    #[test]
    fn collects_all_findings() {
        let r = with(|r| {
            r.message_id.clear();
            patient(r).bsn = "123456789".into();
            vacc(r).dose_number = 0;
            vacc(r).country = "ZZ".into();
            perf(r).r#type = 0;
        });
        let f = findings(r);
        assert_eq!(f.len(), 5, "{f:?}");
        assert_has(&f, Code::MissingField, "message_id");
        assert_has(&f, Code::BsnChecksum, "patient.bsn");
        assert_has(&f, Code::DoseOutOfRange, "vaccination.dose_number");
        assert_has(&f, Code::CountryUnknown, "vaccination.country");
        assert_has(&f, Code::MissingField, "performer.type");
    }

    // --- message id, action, refers_to --------------------------------------

    #[test]
    fn message_id_missing() {
        assert_only_error(
            with(|r| r.message_id.clear()),
            Code::MissingField,
            "message_id",
        );
    }

    #[test]
    fn message_id_too_long() {
        assert_eq!(findings(with(|r| r.message_id = "a".repeat(64))), vec![]);
        assert_only_error(
            with(|r| r.message_id = "a".repeat(65)),
            Code::MessageIdTooLong,
            "message_id",
        );
    }

    #[test]
    fn message_id_invalid_characters() {
        for bad in [
            "msg 1",
            "msg\t1",
            "msg\n",
            "m\u{7f}",
            "bericht-\u{e9}",
            "\u{200b}",
        ] {
            assert_only_error(
                with(|r| r.message_id = bad.into()),
                Code::InvalidCharacters,
                "message_id",
            );
        }
        assert_eq!(
            findings(with(|r| r.message_id = "GP:123/2021-03-04#7_a.b~".into())),
            vec![]
        );
    }

    #[test]
    fn action_missing_and_invalid() {
        assert_only_error(with(|r| r.action = 0), Code::MissingField, "action");
        assert_only_error(with(|r| r.action = 99), Code::InvalidValue, "action");
        assert_only_error(with(|r| r.action = -1), Code::InvalidValue, "action");
    }

    #[test]
    fn refers_to_missing() {
        for action in [Action::Correct, Action::Retract] {
            assert_only_error(
                with(|r| r.action = action as i32),
                Code::RefersToMissing,
                "refers_to",
            );
        }
    }

    #[test]
    fn refers_to_present_for_correct_and_retract() {
        for action in [Action::Correct, Action::Retract] {
            let r = with(|r| {
                r.action = action as i32;
                r.message_id = "msg-0002".into();
                r.refers_to = "msg-0001".into();
            });
            assert_eq!(findings(r), vec![]);
        }
    }

    #[test]
    fn refers_to_unexpected() {
        assert_only_error(
            with(|r| r.refers_to = "msg-0000".into()),
            Code::RefersToUnexpected,
            "refers_to",
        );
    }

    #[test]
    fn refers_to_self() {
        let r = with(|r| {
            r.action = Action::Correct as i32;
            r.refers_to = r.message_id.clone();
        });
        assert_only_error(r, Code::RefersToSelf, "refers_to");
    }

    #[test]
    fn refers_to_length_and_characters() {
        let long = with(|r| {
            r.action = Action::Retract as i32;
            r.refers_to = "b".repeat(65);
        });
        assert_only_error(long, Code::MessageIdTooLong, "refers_to");
        let spaced = with(|r| {
            r.action = Action::Retract as i32;
            r.refers_to = "msg 0001".into();
        });
        assert_only_error(spaced, Code::InvalidCharacters, "refers_to");
    }

    // --- consent and subject -----------------------------------------------

    #[test]
    fn consent_missing_and_invalid() {
        let (r, f) = run(with(|r| r.consent = 0));
        assert_eq!(f.len(), 1);
        assert_has(&f, Code::MissingField, "consent");
        assert_eq!(r.patient, None, "no consent: identity is removed");
        assert_only_error(with(|r| r.consent = 7), Code::InvalidValue, "consent");
    }

    #[test]
    fn patient_missing() {
        assert_only_error(with(|r| r.patient = None), Code::PatientMissing, "patient");
    }

    #[test]
    fn anonymous_with_consent_is_a_warning() {
        let r = with(|r| r.anonymous = Some(AnonymousSubject { age_band: 2 }));
        let f = findings(r);
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].code, f[0].field, f[0].severity),
            (Code::AnonymousWithConsent, "anonymous", Severity::Warning)
        );
        assert!(!is_rejected(&f));
    }

    #[test]
    fn pii_without_consent_removes_patient_and_hides_values() {
        let mut r = valid_anonymous_record();
        r.patient = Some(Patient {
            bsn: "249566758".into(),
            given_names: "Fatima".into(),
            infix: "el".into(),
            family_name: "Amrani".into(),
            birth_date: "1960-01-01".into(),
        });
        let (r, f) = run(r);
        assert_eq!(r.patient, None);
        assert_eq!(f.len(), 5, "{f:?}");
        for field in [
            "patient.bsn",
            "patient.given_names",
            "patient.infix",
            "patient.family_name",
            "patient.birth_date",
        ] {
            assert_has(&f, Code::PiiWithoutConsent, field);
        }
        assert!(f.iter().all(|x| x.severity == Severity::Error));
        for x in &f {
            assert!(
                !x.message.bytes().any(|b| b.is_ascii_digit()),
                "{}",
                x.message
            );
            for v in ["Fatima", "Amrani", "1960"] {
                assert!(!x.message.contains(v));
            }
        }
    }

    #[test]
    fn pii_without_consent_one_field() {
        let mut r = valid_anonymous_record();
        r.patient = Some(Patient {
            bsn: "249566758".into(),
            ..Default::default()
        });
        let (r, f) = run(r);
        assert_eq!(r.patient, None);
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].code, f[0].field),
            (Code::PiiWithoutConsent, "patient.bsn")
        );
        assert!(!f[0].message.contains("249566758"));
    }

    #[test]
    fn empty_patient_without_consent_is_dropped_silently() {
        let mut r = valid_anonymous_record();
        r.patient = Some(Patient::default());
        let (r, f) = run(r);
        assert_eq!(f, vec![]);
        assert_eq!(r.patient, None);
    }

    #[test]
    fn age_band_missing() {
        let mut r = valid_anonymous_record();
        r.anonymous = None;
        assert_only_error(r, Code::AgeBandMissing, "anonymous.age_band");
        let mut r = valid_anonymous_record();
        r.anonymous = Some(AnonymousSubject { age_band: 0 });
        assert_only_error(r, Code::AgeBandMissing, "anonymous.age_band");
        let mut r = valid_anonymous_record();
        r.anonymous = Some(AnonymousSubject { age_band: 42 });
        assert_only_error(r, Code::InvalidValue, "anonymous.age_band");
    }

    // --- BSN ----------------------------------------------------------------

    #[test]
    fn bsn_eleven_test() {
        assert!(bsn_is_valid("249566758"));
        assert!(bsn_is_valid("011111112"));
        assert!(!bsn_is_valid("000000000"));
        assert!(!bsn_is_valid("123456789"));
        assert!(!bsn_is_valid("24956675"));
        assert!(!bsn_is_valid("2495667580"));
        assert!(!bsn_is_valid("24956675a"));
        assert!(!bsn_is_valid("+49566758"));
        assert!(!bsn_is_valid(""));
        assert!(!bsn_is_valid("２49566758"));
    }

    #[test]
    fn bsn_missing() {
        assert_only_error(
            with(|r| patient(r).bsn.clear()),
            Code::MissingField,
            "patient.bsn",
        );
    }

    #[test]
    fn bsn_format() {
        for bad in [
            "000000000",
            "00000000",
            "12345",
            "2495667580",
            "24956675X",
            "249 566 758",
            "249-566-758",
            " 249566758",
        ] {
            assert_only_error(
                with(|r| patient(r).bsn = bad.into()),
                Code::BsnFormat,
                "patient.bsn",
            );
        }
    }

    #[test]
    fn bsn_checksum() {
        let f = findings(with(|r| patient(r).bsn = "123456789".into()));
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].code, f[0].field), (Code::BsnChecksum, "patient.bsn"));
        assert_eq!(f[0].message, "BSN fails the eleven test (elfproef)");
    }

    #[test]
    fn bsn_eight_digits_is_padded() {
        let (r, f) = run(with(|r| patient(r).bsn = "11111112".into()));
        assert_eq!(f, vec![]);
        assert_eq!(r.patient.map(|p| p.bsn).as_deref(), Some("011111112"));
    }

    #[test]
    fn bsn_eight_digits_padded_then_checked() {
        let (r, f) = run(with(|r| patient(r).bsn = "12345678".into()));
        assert_eq!(r.patient.map(|p| p.bsn).as_deref(), Some("012345678"));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, Code::BsnChecksum);
    }

    // --- names --------------------------------------------------------------

    #[test]
    fn family_name_missing() {
        assert_only_error(
            with(|r| patient(r).family_name.clear()),
            Code::MissingField,
            "patient.family_name",
        );
    }

    #[test]
    fn given_names_and_infix_optional() {
        let r = with(|r| {
            patient(r).given_names.clear();
            patient(r).infix.clear();
        });
        assert_eq!(findings(r), vec![]);
    }

    type NameField = (&'static str, fn(&mut Patient) -> &mut String);

    #[test]
    fn names_in_every_script_up_to_50_characters() {
        let scripts = ["ع", "张", "Ω", "Ж", "é", "ש", "a"];
        let fields: [NameField; 3] = [
            ("patient.given_names", |p| &mut p.given_names),
            ("patient.infix", |p| &mut p.infix),
            ("patient.family_name", |p| &mut p.family_name),
        ];
        for s in scripts {
            for (field, get) in fields {
                let ok = with(|r| *get(patient(r)) = s.repeat(50));
                assert_eq!(findings(ok), vec![], "{s} x50 in {field}");
                let long = with(|r| *get(patient(r)) = s.repeat(51));
                assert_only_error(long, Code::NameTooLong, field);
            }
        }
    }

    #[test]
    fn real_names_accepted() {
        for (given, infix, family) in [
            ("محمد", "", "العلي"),
            ("小明", "", "王"),
            ("Γιώργος", "", "Παπαδόπουλος"),
            ("Наталья", "", "Иванова"),
            ("Zoë Anaïs", "van 't", "Hoëvenaars-Çelik"),
            ("Jean-Luc", "d'", "Ørsted"),
        ] {
            let r = with(|r| {
                let p = patient(r);
                p.given_names = given.into();
                p.infix = infix.into();
                p.family_name = family.into();
            });
            assert_eq!(findings(r), vec![], "{family}");
        }
    }

    #[test]
    fn name_control_characters() {
        for bad in ["Jan\nPiet", "Jan\u{0}", "\u{1b}[31m", "a\u{85}b"] {
            assert_only_error(
                with(|r| patient(r).given_names = bad.into()),
                Code::InvalidCharacters,
                "patient.given_names",
            );
        }
        assert_only_error(
            with(|r| patient(r).family_name = "Berg\r".into()),
            Code::InvalidCharacters,
            "patient.family_name",
        );
    }

    // --- birth date ---------------------------------------------------------

    #[test]
    fn birth_date_missing() {
        assert_only_error(
            with(|r| patient(r).birth_date.clear()),
            Code::MissingField,
            "patient.birth_date",
        );
    }

    #[test]
    fn birth_date_with_xx() {
        for ok in [
            "1950-XX-XX",
            "1950-05-XX",
            "2021-XX-XX",
            "2021-06-XX",
            "1950-12-31",
        ] {
            let r = with(|r| {
                patient(r).birth_date = ok.into();
                vacc(r).date = "2021-06-01".into();
            });
            assert_eq!(findings(r), vec![], "{ok}");
        }
        assert_eq!(parse_birth_date("1950-XX-XX"), Some(date!(1950 - 01 - 01)));
        assert_eq!(parse_birth_date("1950-05-XX"), Some(date!(1950 - 05 - 01)));
    }

    #[test]
    fn birth_date_format() {
        for bad in [
            "1950-02-30",
            "1950-XX-05",
            "1950-13-XX",
            "1950-00-01",
            "1950-01-00",
            "1950-xx-xx",
            "1950/01/01",
            "50-01-01",
            "1950-1-01",
            "1950-01-1",
            "1950-01-011",
            "19500101",
            "1950-01-01T00:00:00Z",
            "+950-01-01",
            "XXXX-XX-XX",
            "１９５０-01-01",
        ] {
            assert_only_error(
                with(|r| patient(r).birth_date = bad.into()),
                Code::BirthDateFormat,
                "patient.birth_date",
            );
        }
    }

    #[test]
    fn birth_date_in_future() {
        // a birth date after today also puts the vaccination before the birth
        for future in ["2021-06-02", "2022-XX-XX", "2021-07-XX"] {
            let f = findings(with(|r| patient(r).birth_date = future.into()));
            assert_eq!(f.len(), 2, "{future}: {f:?}");
            assert_has(&f, Code::BirthDateInFuture, "patient.birth_date");
            assert_has(&f, Code::VaccinationDateBeforeBirth, "vaccination.date");
        }
        // the earliest date of "2021-06-XX" is today: not in the future
        let r = with(|r| {
            patient(r).birth_date = "2021-06-XX".into();
            vacc(r).date = "2021-06-01".into();
        });
        assert_eq!(findings(r), vec![]);
    }

    #[test]
    fn leap_years() {
        assert_eq!(parse_date("2024-02-29"), Some(date!(2024 - 02 - 29)));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_date("2000-02-29"), Some(date!(2000 - 02 - 29)));
        assert_eq!(parse_date("1900-02-29"), None);

        let today = date!(2024 - 06 - 01);
        let mut r = with(|r| vacc(r).date = "2024-02-29".into());
        assert_eq!(validate_record(&mut r, &Rules::default(), today), vec![]);
        let mut r = with(|r| vacc(r).date = "2023-02-29".into());
        let f = validate_record(&mut r, &Rules::default(), today);
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].code, f[0].field),
            (Code::VaccinationDateFormat, "vaccination.date")
        );

        let mut r = with(|r| patient(r).birth_date = "2020-02-29".into());
        assert_eq!(validate_record(&mut r, &Rules::default(), today), vec![]);
        let mut r = with(|r| patient(r).birth_date = "2023-02-29".into());
        let f = validate_record(&mut r, &Rules::default(), today);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, Code::BirthDateFormat);
    }

    // --- vaccination --------------------------------------------------------

    #[test]
    fn vaccination_missing() {
        assert_only_error(
            with(|r| r.vaccination = None),
            Code::MissingField,
            "vaccination",
        );
    }

    #[test]
    fn product_missing() {
        let r = with(|r| {
            vacc(r).hpk_code.clear();
            vacc(r).eu_product_number.clear();
        });
        assert_only_error(r, Code::ProductMissing, "vaccination.hpk_code");
    }

    #[test]
    fn one_product_code_is_enough() {
        assert_eq!(findings(with(|r| vacc(r).hpk_code.clear())), vec![]);
        assert_eq!(
            findings(with(|r| vacc(r).eu_product_number.clear())),
            vec![]
        );
        let bimervax = with(|r| {
            vacc(r).hpk_code.clear();
            vacc(r).eu_product_number = "EU/1/22/1709".into();
        });
        assert_eq!(findings(bimervax), vec![]);
    }

    #[test]
    fn unknown_product() {
        assert_only_error(
            with(|r| vacc(r).hpk_code = "1234567".into()),
            Code::UnknownProduct,
            "vaccination.hpk_code",
        );
        assert_only_error(
            with(|r| vacc(r).eu_product_number = "EU/1/99/0001".into()),
            Code::UnknownProduct,
            "vaccination.eu_product_number",
        );
        let r = with(|r| {
            vacc(r).hpk_code = "0000000".into();
            vacc(r).eu_product_number.clear();
        });
        assert_only_error(r, Code::UnknownProduct, "vaccination.hpk_code");
    }

    #[test]
    fn product_mismatch_is_a_warning() {
        // HPK Comirnaty, EU number Spikevax
        let (_, f) = run(with(|r| vacc(r).eu_product_number = "EU/1/20/1507".into()));
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].code, f[0].field, f[0].severity),
            (
                Code::ProductMismatch,
                "vaccination.eu_product_number",
                Severity::Warning
            )
        );
        assert!(!is_rejected(&f));
    }

    #[test]
    fn product_lookup() {
        assert_eq!(
            product_by_hpk("2924536").map(|p| p.eu_number),
            Some("EU/1/20/1507")
        );
        assert_eq!(
            product_by_eu_number("EU/1/21/1618").map(|p| p.hpk),
            Some(None)
        );
        assert!(product_by_hpk("EU/1/20/1528").is_none());
    }

    #[test]
    fn vaccination_date_missing() {
        assert_only_error(
            with(|r| vacc(r).date.clear()),
            Code::MissingField,
            "vaccination.date",
        );
    }

    #[test]
    fn vaccination_date_format() {
        for bad in [
            "2021-02-30",
            "2021-03-XX",
            "04-03-2021",
            "2021-3-4",
            "2021-03-04T10:00:00Z",
            " 2021-03-04",
        ] {
            assert_only_error(
                with(|r| vacc(r).date = bad.into()),
                Code::VaccinationDateFormat,
                "vaccination.date",
            );
        }
    }

    #[test]
    fn vaccination_date_in_future() {
        assert_eq!(
            findings(with(|r| vacc(r).date = "2021-06-01".into())),
            vec![]
        );
        assert_only_error(
            with(|r| vacc(r).date = "2021-06-02".into()),
            Code::VaccinationDateInFuture,
            "vaccination.date",
        );
    }

    #[test]
    fn vaccination_date_before_campaign() {
        assert_eq!(
            findings(with(|r| vacc(r).date = "2021-01-06".into())),
            vec![]
        );
        assert_only_error(
            with(|r| vacc(r).date = "2021-01-05".into()),
            Code::VaccinationDateBeforeCampaign,
            "vaccination.date",
        );
        let rules = Rules {
            campaign_start: date!(2021 - 03 - 05),
            ..Rules::default()
        };
        let mut r = valid_record();
        let f = validate_record(&mut r, &rules, TODAY);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, Code::VaccinationDateBeforeCampaign);
    }

    #[test]
    fn vaccination_date_before_birth() {
        let r = with(|r| {
            patient(r).birth_date = "2021-03-05".into();
            vacc(r).date = "2021-03-04".into();
        });
        assert_only_error(r, Code::VaccinationDateBeforeBirth, "vaccination.date");
        // XX: only reject before the first day of the birth month / year
        let r = with(|r| {
            patient(r).birth_date = "2021-03-XX".into();
            vacc(r).date = "2021-03-01".into();
        });
        assert_eq!(findings(r), vec![]);
        let r = with(|r| {
            patient(r).birth_date = "2021-03-XX".into();
            vacc(r).date = "2021-02-28".into();
        });
        assert_only_error(r, Code::VaccinationDateBeforeBirth, "vaccination.date");
        let r = with(|r| {
            patient(r).birth_date = "2021-XX-XX".into();
            vacc(r).date = "2021-01-06".into();
        });
        assert_eq!(findings(r), vec![]);
        // an invalid birth date gives no before-birth finding
        let r = with(|r| patient(r).birth_date = "2021-13-XX".into());
        assert_only_error(r, Code::BirthDateFormat, "patient.birth_date");
    }

    #[test]
    fn dose_out_of_range() {
        for n in [0, 10, 100] {
            assert_only_error(
                with(|r| vacc(r).dose_number = n),
                Code::DoseOutOfRange,
                "vaccination.dose_number",
            );
            assert_only_error(
                with(|r| vacc(r).total_doses = n),
                Code::DoseOutOfRange,
                "vaccination.total_doses",
            );
        }
        let r = with(|r| {
            vacc(r).dose_number = 9;
            vacc(r).total_doses = 9;
        });
        assert_eq!(findings(r), vec![]);
    }

    #[test]
    fn booster_dose_above_total_is_accepted() {
        let r = with(|r| {
            vacc(r).dose_number = 3;
            vacc(r).total_doses = 2;
        });
        assert_eq!(findings(r), vec![]);
        let janssen = with(|r| {
            vacc(r).hpk_code = "2934701".into();
            vacc(r).eu_product_number = "EU/1/20/1525".into();
            vacc(r).dose_number = 2;
            vacc(r).total_doses = 1;
        });
        assert_eq!(findings(janssen), vec![]);
    }

    #[test]
    fn lot_number() {
        assert_only_error(
            with(|r| vacc(r).lot_number.clear()),
            Code::MissingField,
            "vaccination.lot_number",
        );
        assert_eq!(
            findings(with(|r| vacc(r).lot_number = "Ä".repeat(50))),
            vec![]
        );
        assert_only_error(
            with(|r| vacc(r).lot_number = "L".repeat(51)),
            Code::LotNumberTooLong,
            "vaccination.lot_number",
        );
        assert_only_error(
            with(|r| vacc(r).lot_number = "EJ\t6795".into()),
            Code::InvalidCharacters,
            "vaccination.lot_number",
        );
    }

    #[test]
    fn country_alpha3_is_converted() {
        let (r, f) = run(with(|r| vacc(r).country = "NLD".into()));
        assert_eq!(f, vec![]);
        assert_eq!(r.vaccination.map(|v| v.country).as_deref(), Some("NL"));
        for (given, want) in [
            ("nl", "NL"),
            ("Nl", "NL"),
            ("deu", "DE"),
            ("BES", "BQ"),
            ("cw", "CW"),
        ] {
            let (r, f) = run(with(|r| vacc(r).country = given.into()));
            assert_eq!(f, vec![], "{given}");
            assert_eq!(r.vaccination.map(|v| v.country).as_deref(), Some(want));
        }
    }

    #[test]
    fn country_missing_and_unknown() {
        assert_only_error(
            with(|r| vacc(r).country.clear()),
            Code::MissingField,
            "vaccination.country",
        );
        for bad in ["XX", "UK", "N", "NLDX", "Netherlands", "NL ", "ÑL", "528"] {
            let (r, f) = run(with(|r| vacc(r).country = bad.into()));
            assert_eq!(f.len(), 1, "{bad}");
            assert_eq!(
                (f[0].code, f[0].field),
                (Code::CountryUnknown, "vaccination.country")
            );
            assert_eq!(
                r.vaccination.map(|v| v.country).as_deref(),
                Some(bad),
                "unknown left as is"
            );
        }
    }

    // --- performer ----------------------------------------------------------

    #[test]
    fn performer_missing() {
        assert_only_error(
            with(|r| r.performer = None),
            Code::MissingField,
            "performer",
        );
    }

    #[test]
    fn organization_id_missing() {
        assert_only_error(
            with(|r| perf(r).organization_id.clear()),
            Code::MissingField,
            "performer.organization_id",
        );
    }

    #[test]
    fn organization_id_type() {
        assert_only_error(
            with(|r| perf(r).id_type = 0),
            Code::MissingField,
            "performer.id_type",
        );
        assert_only_error(
            with(|r| perf(r).id_type = 3),
            Code::InvalidValue,
            "performer.id_type",
        );
        assert_eq!(
            findings(with(|r| perf(r).id_type = OrganizationIdType::Ura as i32)),
            vec![]
        );
    }

    #[test]
    fn organization_id_format() {
        for id_type in [OrganizationIdType::Agb, OrganizationIdType::Ura] {
            for bad in [
                "1234567",
                "123456789",
                "1234567a",
                "1234 567",
                "１２３４５６７８",
            ] {
                let r = with(|r| {
                    perf(r).id_type = id_type as i32;
                    perf(r).organization_id = bad.into();
                });
                assert_only_error(r, Code::OrganizationIdFormat, "performer.organization_id");
            }
        }
    }

    #[test]
    fn performer_type() {
        assert_only_error(
            with(|r| perf(r).r#type = 0),
            Code::MissingField,
            "performer.type",
        );
        assert_only_error(
            with(|r| perf(r).r#type = 77),
            Code::InvalidValue,
            "performer.type",
        );
        for t in 1..=6 {
            assert_eq!(findings(with(|r| perf(r).r#type = t)), vec![]);
        }
    }

    // --- messages never echo values ----------------------------------------

    #[test]
    fn messages_never_contain_submitted_values() {
        let r = VaccinationRecord {
            message_id: "SECRETID 1".into(),
            action: Action::Register as i32,
            refers_to: "SECRETREF".into(),
            consent: Consent::Given as i32,
            patient: Some(Patient {
                bsn: "987654321".into(),
                given_names: "Secretgiven\n".into(),
                infix: "Secretinfix".repeat(5),
                family_name: "Secretfamily".repeat(5),
                birth_date: "1977-02-30".into(),
            }),
            anonymous: Some(AnonymousSubject { age_band: 1 }),
            vaccination: Some(Vaccination {
                hpk_code: "7777777".into(),
                eu_product_number: "EU/SECRET".into(),
                date: "2031-07-07".into(),
                dose_number: 88,
                total_doses: 44,
                lot_number: "SECRETLOT".repeat(6),
                country: "QQQ".into(),
            }),
            performer: Some(Performer {
                organization_id: "SECRETORG".into(),
                id_type: OrganizationIdType::Ura as i32,
                r#type: 55,
            }),
            is_test: false,
        };
        let f = findings(r);
        assert!(f.len() >= 15, "{f:?}");
        for x in &f {
            let m = x.message.to_ascii_lowercase();
            for v in [
                "secret",
                "987654321",
                "1977",
                "7777777",
                "2031",
                "88",
                "44",
                "qqq",
                "55",
            ] {
                assert!(!m.contains(v), "{} leaks {v}", x.message);
            }
        }
    }

    // --- batch header -------------------------------------------------------

    fn header() -> BatchHeader {
        BatchHeader {
            batch_id: "2021-03-04-run-1".into(),
            source_system: "Medicom 12.4".into(),
            created_at: "2021-03-04T10:15:00Z".into(),
            record_count: 3,
            file_name: "export-2021-03-04.csv".into(),
        }
    }

    #[track_caller]
    fn header_problem(h: Option<&BatchHeader>, actual: usize, code: Code, field: &str) {
        let p = validate_header(h, actual, &Rules::default()).expect_err("a problem");
        assert_eq!((p.code, p.field), (code, field), "{p}");
    }

    fn with_header(f: impl FnOnce(&mut BatchHeader)) -> BatchHeader {
        let mut h = header();
        f(&mut h);
        h
    }

    #[test]
    fn header_valid() {
        assert_eq!(
            validate_header(Some(&header()), 3, &Rules::default()),
            Ok(())
        );
        let minimal = with_header(|h| {
            h.created_at.clear();
            h.file_name.clear();
        });
        assert_eq!(
            validate_header(Some(&minimal), 3, &Rules::default()),
            Ok(())
        );
        let offset = with_header(|h| h.created_at = "2021-03-04T11:15:00.123+01:00".into());
        assert_eq!(validate_header(Some(&offset), 3, &Rules::default()), Ok(()));
    }

    #[test]
    fn header_missing() {
        header_problem(None, 3, Code::HeaderMissing, "header");
    }

    #[test]
    fn batch_id_rules() {
        header_problem(
            Some(&with_header(|h| h.batch_id.clear())),
            3,
            Code::BatchIdMissing,
            "header.batch_id",
        );
        let ok = with_header(|h| h.batch_id = "é".repeat(128));
        assert_eq!(validate_header(Some(&ok), 3, &Rules::default()), Ok(()));
        header_problem(
            Some(&with_header(|h| h.batch_id = "b".repeat(129))),
            3,
            Code::TooLong,
            "header.batch_id",
        );
        header_problem(
            Some(&with_header(|h| h.batch_id = "run\n1".into())),
            3,
            Code::InvalidCharacters,
            "header.batch_id",
        );
    }

    #[test]
    fn source_system_rules() {
        header_problem(
            Some(&with_header(|h| h.source_system.clear())),
            3,
            Code::SourceSystemMissing,
            "header.source_system",
        );
        header_problem(
            Some(&with_header(|h| h.source_system = "s".repeat(129))),
            3,
            Code::TooLong,
            "header.source_system",
        );
        header_problem(
            Some(&with_header(|h| h.source_system = "Medicom\u{0}".into())),
            3,
            Code::InvalidCharacters,
            "header.source_system",
        );
    }

    #[test]
    fn created_at_format() {
        for bad in [
            "2021-03-04",
            "2021-03-04 10:15:00",
            "2021-03-04T10:15:00",
            "yesterday",
            "2021-02-30T10:15:00Z",
        ] {
            header_problem(
                Some(&with_header(|h| h.created_at = bad.into())),
                3,
                Code::HeaderCreatedAtFormat,
                "header.created_at",
            );
        }
    }

    #[test]
    fn file_name_rules() {
        let ok = with_header(|h| h.file_name = "f".repeat(255));
        assert_eq!(validate_header(Some(&ok), 3, &Rules::default()), Ok(()));
        header_problem(
            Some(&with_header(|h| h.file_name = "f".repeat(256))),
            3,
            Code::TooLong,
            "header.file_name",
        );
        header_problem(
            Some(&with_header(|h| h.file_name = "a\rb.csv".into())),
            3,
            Code::InvalidCharacters,
            "header.file_name",
        );
    }

    #[test]
    fn record_count_mismatch() {
        header_problem(
            Some(&header()),
            2,
            Code::RecordCountMismatch,
            "header.record_count",
        );
        header_problem(
            Some(&header()),
            4,
            Code::RecordCountMismatch,
            "header.record_count",
        );
        header_problem(
            Some(&header()),
            0,
            Code::RecordCountMismatch,
            "header.record_count",
        );
    }

    #[test]
    fn batch_empty() {
        header_problem(
            Some(&with_header(|h| h.record_count = 0)),
            0,
            Code::BatchEmpty,
            "records",
        );
    }

    #[test]
    fn too_many_records() {
        let rules = Rules {
            max_records_per_batch: 2,
            ..Rules::default()
        };
        let p = validate_header(Some(&header()), 3, &rules).expect_err("too many");
        assert_eq!((p.code, p.field), (Code::TooManyRecords, "records"));
        assert_eq!(
            validate_header(Some(&with_header(|h| h.record_count = 2)), 2, &rules),
            Ok(())
        );
        header_problem(
            Some(&with_header(|h| h.record_count = 10_001)),
            10_001,
            Code::TooManyRecords,
            "records",
        );
        assert_eq!(
            validate_header(
                Some(&with_header(|h| h.record_count = 10_000)),
                10_000,
                &Rules::default()
            ),
            Ok(())
        );
    }

    #[test]
    fn batch_problem_display() {
        let p = validate_header(None, 1, &Rules::default()).expect_err("missing");
        assert_eq!(
            p.to_string(),
            "HEADER_MISSING: the batch has no header record"
        );
    }

    #[test]
    fn conflicting_duplicate_code_is_catalogued() {
        assert_eq!(Code::ConflictingDuplicate.as_str(), "CONFLICTING_DUPLICATE");
        assert_eq!(
            Code::parse("CONFLICTING_DUPLICATE"),
            Some(Code::ConflictingDuplicate)
        );
    }
}
