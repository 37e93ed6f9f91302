//! The one catalogue of stable finding and problem codes (`BSN_CHECKSUM`, ...).
//!
//! Owns: the [`Code`] enum and its wire spelling (upper snake case). The codes are
//! part of the public contract (see `docs/error-codes.md`): never rename or reuse
//! one, only add. Codes used by other modules (the store's `CONFLICTING_DUPLICATE`)
//! live here too, so there is a single list.
//! Must not: do any I/O (no files, clock or logging).
//! Called by: [`crate::schema`] validation, the intake service (receipts, status
//! details), the store, and the offline `validate` CLI.

use std::fmt;

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, )*) => {
        /// A stable, machine-readable problem code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $( $(#[$doc])* $variant, )*
        }

        impl Code {
            /// Every code, in catalogue order.
            pub const ALL: &'static [Code] = &[ $( Code::$variant, )* ];

            /// The stable upper snake case spelling ("BSN_CHECKSUM").
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Code::$variant => $name, )*
                }
            }

            /// The code with this exact spelling, if any.
            pub fn parse(s: &str) -> Option<Code> {
                match s {
                    $( $name => Some(Code::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

codes! {
    // --- generic field problems ---
    /// A required field is absent (empty string, zero enum value, missing message).
    MissingField => "MISSING_FIELD",
    /// A field is longer than its limit.
    TooLong => "TOO_LONG",
    /// A field contains characters it may not (control characters, whitespace in ids).
    InvalidCharacters => "INVALID_CHARACTERS",
    /// An enum field holds a number the contract does not define.
    InvalidValue => "INVALID_VALUE",
    // --- identity and action ---
    /// message_id or refers_to is longer than 64 characters.
    MessageIdTooLong => "MESSAGE_ID_TOO_LONG",
    /// CORRECT or RETRACT without refers_to.
    RefersToMissing => "REFERS_TO_MISSING",
    /// REGISTER with refers_to.
    RefersToUnexpected => "REFERS_TO_UNEXPECTED",
    /// refers_to names the record itself.
    RefersToSelf => "REFERS_TO_SELF",
    // --- subject ---
    /// Identifying data in a record without consent.
    PiiWithoutConsent => "PII_WITHOUT_CONSENT",
    /// Consent GIVEN but no patient.
    PatientMissing => "PATIENT_MISSING",
    /// The BSN is not 9 digits (or is all zeros).
    BsnFormat => "BSN_FORMAT",
    /// The BSN fails the eleven test.
    BsnChecksum => "BSN_CHECKSUM",
    /// A name part is longer than 50 characters.
    NameTooLong => "NAME_TOO_LONG",
    /// The birth date is not YYYY-MM-DD (with optional XX) or not a real date.
    BirthDateFormat => "BIRTH_DATE_FORMAT",
    /// The birth date is after today.
    BirthDateInFuture => "BIRTH_DATE_IN_FUTURE",
    // --- vaccination ---
    /// The vaccination date is not YYYY-MM-DD or not a real date.
    VaccinationDateFormat => "VACCINATION_DATE_FORMAT",
    /// The vaccination date is after today.
    VaccinationDateInFuture => "VACCINATION_DATE_IN_FUTURE",
    /// The vaccination date is before the campaign started.
    VaccinationDateBeforeCampaign => "VACCINATION_DATE_BEFORE_CAMPAIGN",
    /// The vaccination date is before the patient's birth.
    VaccinationDateBeforeBirth => "VACCINATION_DATE_BEFORE_BIRTH",
    /// dose_number or total_doses is outside 1..=9.
    DoseOutOfRange => "DOSE_OUT_OF_RANGE",
    /// Neither an HPK code nor an EU product number.
    ProductMissing => "PRODUCT_MISSING",
    /// The HPK code or EU product number is not in the product table.
    UnknownProduct => "UNKNOWN_PRODUCT",
    /// Warning: HPK code and EU product number name different products.
    ProductMismatch => "PRODUCT_MISMATCH",
    /// The lot number is longer than 50 characters.
    LotNumberTooLong => "LOT_NUMBER_TOO_LONG",
    /// The country is not an ISO 3166-1 alpha-2 or alpha-3 code.
    CountryUnknown => "COUNTRY_UNKNOWN",
    // --- performer ---
    /// An AGB or URA code is not 8 digits.
    OrganizationIdFormat => "ORGANIZATION_ID_FORMAT",
    // --- anonymous subject ---
    /// Consent NOT_GIVEN without an age band.
    AgeBandMissing => "AGE_BAND_MISSING",
    /// Warning: consent GIVEN and an anonymous subject as well.
    AnonymousWithConsent => "ANONYMOUS_WITH_CONSENT",
    // --- store ---
    /// A resent message id with different content (used by the store).
    ConflictingDuplicate => "CONFLICTING_DUPLICATE",
    // --- batch ---
    /// The batch has no header.
    HeaderMissing => "HEADER_MISSING",
    /// The header has no batch_id.
    BatchIdMissing => "BATCH_ID_MISSING",
    /// The header has no source_system.
    SourceSystemMissing => "SOURCE_SYSTEM_MISSING",
    /// The header's created_at is not RFC 3339.
    HeaderCreatedAtFormat => "HEADER_CREATED_AT_FORMAT",
    /// The header's record_count differs from the number of records.
    RecordCountMismatch => "RECORD_COUNT_MISMATCH",
    /// The batch holds no records.
    BatchEmpty => "BATCH_EMPTY",
    /// The batch holds more records than allowed.
    TooManyRecords => "TOO_MANY_RECORDS",
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_code_round_trips_and_is_upper_snake() {
        assert_eq!(Code::ALL.len(), 36);
        let mut seen = HashSet::new();
        for &code in Code::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "duplicate spelling {s}");
            assert_eq!(Code::parse(s), Some(code));
            assert_eq!(code.to_string(), s);
            assert!(s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'));
            assert!(!s.starts_with('_') && !s.ends_with('_') && !s.contains("__"));
        }
    }

    #[test]
    fn parse_is_exact() {
        assert_eq!(
            Code::parse("CONFLICTING_DUPLICATE"),
            Some(Code::ConflictingDuplicate)
        );
        assert_eq!(Code::parse("bsn_checksum"), None);
        assert_eq!(Code::parse(""), None);
        assert_eq!(Code::parse("NOPE"), None);
    }

    #[test]
    fn catalogue_is_documented() {
        let doc = include_str!("../../docs/error-codes.md");
        for code in Code::ALL {
            assert!(
                doc.contains(&format!("`{code}`")),
                "{code} missing from docs/error-codes.md"
            );
        }
    }
}
