//! UZI certificates: what the UZI register (under PKIoverheid) writes into a
//! healthcare system's certificate, read into a typed value.
//!
//! Owns: parsing the subjectAltName of a certificate for the two UZI forms,
//! the otherName of type `2.5.5.5` whose value is an IA5String
//! `<OID of the CA>-<version>-<UZI number>-<card type>-<subscriber number>-<role code>-<AGB code>`
//! ([`UziName`]), and the otherName `permanentIdentifier` (RFC 4043, type
//! `1.3.6.1.5.5.7.8.3`) that certificates issued since late 2023 carry the
//! URA in ([`PermanentIdentifier`]); both into one [`UziCertificate`]. A
//! missing or malformed value is a [`UziError`] with a stable code, never a
//! panic (`fuzz/fuzz_targets/parse_uzi.rs`).
//!
//! Must not: decide who a certificate is ([`policy`] does, for the
//! interceptor), do I/O, or log: a person's card carries a personal UZI number,
//! which must not reach a log or an error message (errors name the field, not
//! the value).
//!
//! Called by: [`policy`] (the `ura` identity policy), `schakel admin certs
//! inspect`, the fuzz target and tests. [`dev`] writes UZI-shaped TEST
//! certificates for `schakel certs dev --uzi`.

pub mod dev;
pub mod policy;

use std::fmt;

use x509_parser::asn1_rs::{Any, FromDer, Tag};
use x509_parser::extensions::GeneralName;

/// The otherName type-id of the UZI compound string.
pub const OID_UZI_NAME: &str = "2.5.5.5";
/// The otherName type-id of `permanentIdentifier` (RFC 4043).
pub const OID_PERMANENT_IDENTIFIER: &str = "1.3.6.1.5.5.7.8.3";

/// Why a certificate carries no usable UZI value. Each has a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UziError {
    /// The bytes are not one X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    Certificate(String),
    /// No otherName 2.5.5.5 in the subjectAltName (not a UZI certificate).
    #[error("the certificate has no UZI otherName (2.5.5.5) in its subjectAltName")]
    Missing,
    /// A UZI value is there but does not follow the register's format.
    #[error("malformed UZI value: {0}")]
    Malformed(String),
}

impl UziError {
    /// The stable code (`docs/error-codes.md`, "UZI certificates").
    pub fn code(&self) -> &'static str {
        match self {
            UziError::Missing => "UZI_MISSING",
            UziError::Certificate(_) | UziError::Malformed(_) => "UZI_MALFORMED",
        }
    }
}

fn malformed(reason: impl Into<String>) -> UziError {
    UziError::Malformed(reason.into())
}

/// A URA (UZI-register abonneenummer): an organisation's 8-digit number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ura(String);

impl Ura {
    /// Parses exactly 8 ASCII digits.
    ///
    /// # Errors
    /// [`UziError::Malformed`] for anything else (the value is not echoed).
    pub fn parse(s: &str) -> Result<Ura, UziError> {
        if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Ura(s.to_owned()))
        } else {
            Err(malformed("a URA must be exactly 8 digits"))
        }
    }

    /// The 8 digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ura {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The card type of a UZI certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CardType {
    /// `Z`: a care provider's personal card (zorgverlenerpas).
    CareProvider,
    /// `N`: a named employee's card (medewerkerpas op naam).
    NamedEmployee,
    /// `M`: an unnamed employee's card (medewerkerpas niet op naam).
    UnnamedEmployee,
    /// `S`: a server certificate, the only type that may be a system.
    Server,
}

impl CardType {
    fn parse(s: &str) -> Result<CardType, UziError> {
        match s {
            "Z" => Ok(CardType::CareProvider),
            "N" => Ok(CardType::NamedEmployee),
            "M" => Ok(CardType::UnnamedEmployee),
            "S" => Ok(CardType::Server),
            _ => Err(malformed("the card type must be one of Z, N, M, S")),
        }
    }

    /// The letter the register writes.
    pub fn letter(self) -> char {
        match self {
            CardType::CareProvider => 'Z',
            CardType::NamedEmployee => 'N',
            CardType::UnnamedEmployee => 'M',
            CardType::Server => 'S',
        }
    }

    /// In words, for `certs inspect` and refusals.
    pub fn describe(self) -> &'static str {
        match self {
            CardType::CareProvider => "Z (care provider's personal card)",
            CardType::NamedEmployee => "N (named employee's card)",
            CardType::UnnamedEmployee => "M (unnamed employee's card)",
            CardType::Server => "S (server certificate)",
        }
    }
}

/// The UZI compound string of otherName 2.5.5.5, split and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UziName {
    /// The OID of the issuing UZI CA (dotted).
    pub ca_oid: String,
    /// The format version (digits).
    pub version: String,
    /// The UZI number (digits). For a person's card it identifies the person:
    /// never log it.
    pub uzi_number: String,
    /// The card type.
    pub card_type: CardType,
    /// The subscriber number: the organisation's URA.
    pub ura: Ura,
    /// The role code, e.g. `00.000` for a server.
    pub role: String,
    /// The AGB code (8 digits, zeros when absent).
    pub agb: String,
}

impl UziName {
    /// Parses the IA5String value of otherName 2.5.5.5.
    ///
    /// # Errors
    /// [`UziError::Malformed`] naming the part that is wrong.
    pub fn parse(value: &str) -> Result<UziName, UziError> {
        let parts: Vec<&str> = value.split('-').collect();
        let [ca_oid, version, uzi_number, card_type, ura, role, agb] = parts[..] else {
            return Err(malformed(format!(
                "the UZI string has {} parts separated by '-', not 7",
                parts.len()
            )));
        };
        let digits = |s: &str, what: &str, max: usize| {
            if !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit()) {
                Ok(s.to_owned())
            } else {
                Err(malformed(format!("the {what} must be 1..{max} digits")))
            }
        };
        let oid_ok = !ca_oid.is_empty()
            && ca_oid.len() <= 128
            && ca_oid
                .split('.')
                .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()))
            && ca_oid.contains('.');
        if !oid_ok {
            return Err(malformed("the CA OID must be a dotted OID"));
        }
        let role_ok = !role.is_empty()
            && role.len() <= 16
            && role.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if !role_ok {
            return Err(malformed("the role code must be digits and dots"));
        }
        let agb = digits(agb, "AGB code", 8)?;
        if agb.len() != 8 {
            return Err(malformed("the AGB code must be 8 digits"));
        }
        Ok(UziName {
            ca_oid: ca_oid.to_owned(),
            version: digits(version, "version", 4)?,
            uzi_number: digits(uzi_number, "UZI number", 16)?,
            card_type: CardType::parse(card_type)?,
            ura: Ura::parse(ura)
                .map_err(|_| malformed("the subscriber number (URA) must be exactly 8 digits"))?,
            role: role.to_owned(),
            agb,
        })
    }
}

/// A `permanentIdentifier` otherName (RFC 4043).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermanentIdentifier {
    /// `identifierValue`: the URA in UZI certificates.
    pub value: Option<String>,
    /// `assigner`, dotted, if present.
    pub assigner: Option<String>,
}

/// Everything UZI in one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UziCertificate {
    /// The otherName 2.5.5.5 value.
    pub name: UziName,
    /// The permanentIdentifier, when the certificate has one (issued since
    /// late 2023). When present its value is the same URA as `name.ura`.
    pub permanent_identifier: Option<PermanentIdentifier>,
}

impl UziCertificate {
    /// The organisation's URA.
    pub fn ura(&self) -> &Ura {
        &self.name.ura
    }

    /// Reads the UZI values of a DER certificate.
    ///
    /// # Errors
    /// [`UziError::Certificate`] for bytes that are not a certificate,
    /// [`UziError::Missing`] without an otherName 2.5.5.5, and
    /// [`UziError::Malformed`] for a value that does not parse, two 2.5.5.5
    /// values, or a permanentIdentifier naming another URA.
    pub fn from_der(der: &[u8]) -> Result<UziCertificate, UziError> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| UziError::Certificate(e.to_string()))?;
        if !rest.is_empty() {
            return Err(UziError::Certificate(format!(
                "{} trailing bytes after the certificate",
                rest.len()
            )));
        }
        let san = cert
            .subject_alternative_name()
            .map_err(|e| malformed(format!("subjectAltName: {e}")))?
            .ok_or(UziError::Missing)?;
        Self::from_general_names(&san.value.general_names)
    }

    /// Reads the UZI values of a subjectAltName extension's value (DER of
    /// `GeneralNames`): what [`from_der`](Self::from_der) does after the
    /// certificate is parsed; the fuzz target's entry.
    ///
    /// # Errors
    /// As `from_der`.
    pub fn from_subject_alt_name(der: &[u8]) -> Result<UziCertificate, UziError> {
        use x509_parser::extensions::SubjectAlternativeName;
        let (rest, san) = SubjectAlternativeName::from_der(der)
            .map_err(|e| malformed(format!("subjectAltName: {e}")))?;
        if !rest.is_empty() {
            return Err(malformed("trailing bytes after the subjectAltName"));
        }
        Self::from_general_names(&san.general_names)
    }

    fn from_general_names(general_names: &[GeneralName<'_>]) -> Result<UziCertificate, UziError> {
        let mut names = Vec::new();
        let mut permanent = Vec::new();
        for general in general_names {
            if let GeneralName::OtherName(oid, value) = general {
                match oid.to_id_string().as_str() {
                    OID_UZI_NAME => names.push(UziName::parse(&explicit_ia5(value)?)?),
                    OID_PERMANENT_IDENTIFIER => permanent.push(permanent_identifier(value)?),
                    _ => {}
                }
            }
        }
        let name = match names.len() {
            0 => return Err(UziError::Missing),
            1 => names.remove(0),
            n => return Err(malformed(format!("{n} UZI otherNames (2.5.5.5), not one"))),
        };
        // More than one permanentIdentifier: every one must name the same URA.
        for p in &permanent {
            if let Some(value) = &p.value {
                if value != name.ura.as_str() {
                    return Err(malformed(
                        "the permanentIdentifier names another URA than the UZI string",
                    ));
                }
            }
        }
        Ok(UziCertificate {
            name,
            permanent_identifier: permanent.into_iter().next(),
        })
    }
}

/// The content of an otherName value (`[0] EXPLICIT ANY`) as one DER object.
fn explicit(value: &[u8]) -> Result<Any<'_>, UziError> {
    let (rest, tagged) =
        Any::from_der(value).map_err(|e| malformed(format!("otherName value: {e}")))?;
    if !rest.is_empty() || tagged.tag() != Tag(0) || !tagged.header.is_constructed() {
        return Err(malformed("otherName value is not one [0] EXPLICIT value"));
    }
    let (rest, inner) =
        Any::from_der(tagged.data).map_err(|e| malformed(format!("otherName value: {e}")))?;
    if !rest.is_empty() {
        return Err(malformed("trailing bytes in an otherName value"));
    }
    Ok(inner)
}

/// The IA5String inside an otherName value.
fn explicit_ia5(value: &[u8]) -> Result<String, UziError> {
    let inner = explicit(value)?;
    if inner.tag() != Tag::Ia5String {
        return Err(malformed("the UZI otherName value is not an IA5String"));
    }
    if !inner
        .data
        .iter()
        .all(|b| b.is_ascii() && !b.is_ascii_control())
    {
        return Err(malformed(
            "the UZI otherName value has non-ASCII or control characters",
        ));
    }
    // Checked just above: printable ASCII only, so valid UTF-8.
    String::from_utf8(inner.data.to_vec()).map_err(|_| malformed("not ASCII"))
}

/// `PermanentIdentifier ::= SEQUENCE { identifierValue UTF8String OPTIONAL,
/// assigner OBJECT IDENTIFIER OPTIONAL }`.
fn permanent_identifier(value: &[u8]) -> Result<PermanentIdentifier, UziError> {
    let inner = explicit(value)?;
    if inner.tag() != Tag::Sequence {
        return Err(malformed("permanentIdentifier is not a SEQUENCE"));
    }
    let mut data = inner.data;
    let mut out = PermanentIdentifier {
        value: None,
        assigner: None,
    };
    while !data.is_empty() {
        let (rest, field) =
            Any::from_der(data).map_err(|e| malformed(format!("permanentIdentifier: {e}")))?;
        data = rest;
        match field.tag() {
            Tag::Utf8String if out.value.is_none() && out.assigner.is_none() => {
                let s = std::str::from_utf8(field.data)
                    .map_err(|_| malformed("permanentIdentifier value is not UTF-8"))?;
                out.value = Some(s.to_owned());
            }
            Tag::Oid if out.assigner.is_none() => {
                out.assigner =
                    Some(dotted_oid(field.data).ok_or_else(|| {
                        malformed("permanentIdentifier assigner is not a valid OID")
                    })?);
            }
            _ => return Err(malformed("permanentIdentifier has an unexpected field")),
        }
    }
    Ok(out)
}

/// The dotted form of an OID's content bytes (X.690 8.19). Written here
/// because asn1-rs misprints a first subidentifier of two bytes or more
/// (`2.999.x` shows as `3.16.55.x`).
fn dotted_oid(content: &[u8]) -> Option<String> {
    let mut arcs = Vec::new();
    let mut value: u128 = 0;
    let mut pending = false;
    for (i, b) in content.iter().enumerate() {
        if !pending && *b == 0x80 {
            return None; // a leading 0x80 is not minimal
        }
        value = value.checked_mul(128)? | u128::from(b & 0x7f);
        if value > u128::from(u64::MAX) {
            return None;
        }
        pending = b & 0x80 != 0;
        if !pending {
            if arcs.is_empty() {
                let (first, second) = match value {
                    0..=39 => (0, value),
                    40..=79 => (1, value - 40),
                    _ => (2, value - 80),
                };
                arcs.push(first.to_string());
                arcs.push(second.to_string());
            } else {
                arcs.push(value.to_string());
            }
            value = 0;
        }
        if i + 1 == content.len() && pending {
            return None;
        }
    }
    (!arcs.is_empty()).then(|| arcs.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_name_parses_into_its_parts() {
        let name =
            UziName::parse("2.16.528.1.1003.1.3.5.5.2-1-12345678-S-90000123-00.000-00000000")
                .unwrap();
        assert_eq!(name.ca_oid, "2.16.528.1.1003.1.3.5.5.2");
        assert_eq!(name.version, "1");
        assert_eq!(name.uzi_number, "12345678");
        assert_eq!(name.card_type, CardType::Server);
        assert_eq!(name.ura.as_str(), "90000123");
        assert_eq!(name.role, "00.000");
        assert_eq!(name.agb, "00000000");
    }

    #[test]
    fn malformed_names_are_refused_with_a_code_and_without_the_value() {
        for bad in [
            "",
            "----",
            "2.16.528-1-123-S-90000123-00.000",
            "2.16.528-1-123-S-90000123-00.000-00000000-extra",
            "2.16.528-1-123-X-90000123-00.000-00000000",
            "2.16.528-1-123-S-9000012-00.000-00000000",
            "2.16.528-1-123-S-900001234-00.000-00000000",
            "2.16.528-1-123-S-9000012a-00.000-00000000",
            "2.16.528-1--S-90000123-00.000-00000000",
            "2.16.528-x-123-S-90000123-00.000-00000000",
            "2..16-1-123-S-90000123-00.000-00000000",
            "notanoid-1-123-S-90000123-00.000-00000000",
            "2.16.528-1-123-S-90000123--00000000",
            "2.16.528-1-123-S-90000123-00.000-0000000",
            "2.16.528-1-123-s-90000123-00.000-00000000",
        ] {
            let err = UziName::parse(bad).unwrap_err();
            assert_eq!(err.code(), "UZI_MALFORMED", "{bad:?}");
            if bad.len() > 8 {
                assert!(!err.to_string().contains(bad), "{err}");
            }
        }
    }

    #[test]
    fn oids_print_in_dotted_form() {
        assert_eq!(dotted_oid(&[0x55, 0x05, 0x05]).as_deref(), Some("2.5.5.5"));
        assert_eq!(dotted_oid(&[0x88, 0x37, 0x03]).as_deref(), Some("2.999.3"));
        assert_eq!(dotted_oid(&[0x2b, 0x06, 0x01]).as_deref(), Some("1.3.6.1"));
        for bad in [&[][..], &[0x88], &[0x80, 0x01], &[0xff; 20]] {
            assert_eq!(dotted_oid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ura_is_exactly_eight_digits() {
        assert!(Ura::parse("00000001").is_ok());
        for bad in ["", "1234567", "123456789", "1234567a", "１２３４５６７８"] {
            assert!(Ura::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// The fuzz target's invariants over every truncation and every one-byte
    /// change of a good subjectAltName (deterministic; `scripts/fuzz.sh
    /// 60 parse_uzi` runs the real fuzzer).
    #[test]
    fn every_truncation_and_byte_flip_of_a_good_value_is_an_answer_not_a_panic() {
        let mut opts = dev::UziCertOptions::server("90000001");
        opts.permanent_identifier = Some("90000001".into());
        let good = dev::uzi_san(opts.uzi_string().as_bytes());
        assert_eq!(
            UziCertificate::from_subject_alt_name(&good)
                .unwrap()
                .ura()
                .as_str(),
            "90000001"
        );
        let check = |bytes: &[u8]| match UziCertificate::from_subject_alt_name(bytes) {
            Ok(cert) => {
                let ura = cert.ura().as_str();
                assert!(ura.len() == 8 && ura.bytes().all(|b| b.is_ascii_digit()));
            }
            Err(e) => assert!(matches!(e.code(), "UZI_MISSING" | "UZI_MALFORMED")),
        };
        for len in 0..good.len() {
            check(&good[..len]);
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bytes = good.clone();
                bytes[i] ^= 1 << bit;
                check(&bytes);
            }
        }
        // Any bytes as the IA5String (invalid UTF-8, controls, dashes only).
        for value in [
            &b"\xff\xfe"[..],
            b"\x00-\x01",
            b"-------",
            b"",
            &[b'9'; 4096],
        ] {
            check(&dev::uzi_san(value));
        }
    }

    #[test]
    fn garbage_is_a_certificate_error_not_a_panic() {
        for bytes in [&b""[..], b"\x30", b"\x30\x03\x02\x01\x00", &[0xff; 64]] {
            let err = UziCertificate::from_der(bytes).unwrap_err();
            assert_eq!(err.code(), "UZI_MALFORMED");
        }
    }
}
