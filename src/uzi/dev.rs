//! UZI-shaped TEST certificates: a test "UZI server CA" and client
//! certificates carrying the UZI otherName (2.5.5.5, IA5String) and the
//! permanentIdentifier otherName, for `schakel certs dev --uzi` and tests.
//!
//! Everything here is TEST-ONLY and says so: the CA's name ends in
//! "TEST - NOT FOR PRODUCTION", and the CA OID in the UZI string is under
//! `2.999` (the joint ISO/ITU-T example arc), which no real register uses.
//! RSA test certificates are RSA 4096 (as the register issues) and all share
//! one fixed key published in `test-rsa-4096.key.pem` next to this file (rcgen
//! with ring cannot generate RSA keys); the ECDSA ones get a fresh P-256 key.
//!
//! Must not: be used for production material, or be read by the gateway's
//! identity decisions (those read real certificates through [`super`]).
//!
//! Called by: the CLI (`certs dev --uzi`), `tests/uzi.rs`, unit tests.
//!
//! rcgen 0.14 writes otherName values only as UTF8String
//! (`rcgen::OtherNameValue`), so the subjectAltName is built here as DER and
//! added with `rcgen::CustomExtension`.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::tls::dev::write_file;
use crate::tls::TlsError;

/// The fixed, PUBLIC RSA 4096 test key (PKCS#8) of every RSA UZI test certificate.
const TEST_RSA_4096_KEY_PEM: &str = include_str!("test-rsa-4096.key.pem");

/// The CA OID written into test UZI strings: under the example arc 2.999.
pub const TEST_UZI_CA_OID: &str = "2.999.528.1.1003.1.3.5.5.2";

/// The common name of the test UZI server CA.
pub const TEST_UZI_CA_CN: &str = "UZI-register Server CA TEST - NOT FOR PRODUCTION";

/// The URAs of the certificates `certs dev --uzi` writes.
pub const DEV_URA_A: &str = "90000001";

fn gen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> TlsError {
    let what = what.into();
    move |source| TlsError::Generate { what, source }
}

/// What goes into one UZI test certificate.
#[derive(Debug, Clone)]
pub struct UziCertOptions {
    /// The organisation's URA (the subscriber number).
    pub ura: String,
    /// The card type letter: `S` for a server, `Z`/`N`/`M` for a person's card.
    pub card_type: char,
    /// The UZI number.
    pub uzi_number: String,
    /// RSA 4096 (the fixed test key) instead of a fresh ECDSA P-256 key.
    pub rsa: bool,
    /// Also write a permanentIdentifier otherName with this value (the URA
    /// since late 2023); `None` writes none.
    pub permanent_identifier: Option<String>,
    /// Replace the whole UZI string (for malformed-value tests).
    pub raw_uzi_string: Option<String>,
    /// Leave the UZI otherName out (a certificate of the CA that is no UZI one).
    pub without_uzi_name: bool,
}

impl UziCertOptions {
    /// A server certificate (card type S) of `ura`, ECDSA, with a permanentIdentifier.
    pub fn server(ura: &str) -> Self {
        UziCertOptions {
            ura: ura.to_owned(),
            card_type: 'S',
            uzi_number: "12345678".to_owned(),
            rsa: false,
            permanent_identifier: Some(ura.to_owned()),
            raw_uzi_string: None,
            without_uzi_name: false,
        }
    }

    /// The UZI string these options write.
    pub fn uzi_string(&self) -> String {
        self.raw_uzi_string.clone().unwrap_or_else(|| {
            format!(
                "{TEST_UZI_CA_OID}-1-{}-{}-{}-00.000-00000000",
                self.uzi_number, self.card_type, self.ura
            )
        })
    }
}

/// A test UZI server CA (ECDSA P-256), valid from a day ago for five years.
pub struct UziTestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for UziTestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UziTestCa")
            .field("cert_pem", &self.cert_pem)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn validity() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - Duration::days(1), now + Duration::days(5 * 365 + 2))
}

fn random_serial() -> u64 {
    (rand::random::<u64>() >> 1) | 1
}

impl UziTestCa {
    /// A fresh test CA named `common_name` (use [`TEST_UZI_CA_CN`]).
    ///
    /// # Errors
    /// [`TlsError::Generate`] if rcgen fails.
    pub fn new(common_name: &str) -> Result<UziTestCa, TlsError> {
        let what = || format!("UZI test CA {common_name}");
        let key = KeyPair::generate().map_err(gen_err(what()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.distinguished_name.push(
            DnType::OrganizationName,
            "Schakel TEST - NOT FOR PRODUCTION",
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = validity();
        params.serial_number = Some(SerialNumber::from(random_serial()));
        let cert = params.self_signed(&key).map_err(gen_err(what()))?;
        Ok(UziTestCa {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// The CA certificate (PEM): for `tls.client_ca` and `tls.uzi_server_ca`.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// A client certificate as `opts` say: (cert pem, key pem).
    ///
    /// # Errors
    /// [`TlsError::Generate`] if rcgen fails.
    pub fn client_cert(&self, opts: &UziCertOptions) -> Result<(String, String), TlsError> {
        let what = || format!("UZI test certificate of URA {}", opts.ura);
        let key = if opts.rsa {
            KeyPair::from_pem(TEST_RSA_4096_KEY_PEM).map_err(gen_err(what()))?
        } else {
            KeyPair::generate().map_err(gen_err(what()))?
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("uzi-test-{}.example TEST", opts.ura),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, "UZI TEST organisation");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = if opts.rsa {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity();
        params.serial_number = Some(SerialNumber::from(random_serial()));
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                &[2, 5, 29, 17],
                subject_alt_name(opts),
            ));
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(gen_err(what()))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// DER of a tag-length-value.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// DER of an OBJECT IDENTIFIER from its dotted form (valid OIDs only: test code).
fn oid(dotted: &str) -> Vec<u8> {
    let arcs: Vec<u64> = dotted.split('.').filter_map(|a| a.parse().ok()).collect();
    let mut content = Vec::new();
    let mut push = |mut v: u64| {
        let mut chunk = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            chunk.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        chunk.reverse();
        content.extend(chunk);
    };
    if arcs.len() >= 2 {
        push(arcs[0] * 40 + arcs[1]);
        for arc in &arcs[2..] {
            push(*arc);
        }
    }
    tlv(0x06, &content)
}

/// A GeneralName otherName: `[0] IMPLICIT SEQUENCE { type-id, [0] EXPLICIT value }`.
fn other_name(type_id: &str, value_der: &[u8]) -> Vec<u8> {
    let mut content = oid(type_id);
    content.extend(tlv(0xa0, value_der));
    tlv(0xa0, &content)
}

/// A subjectAltName value (DER) holding one UZI otherName whose IA5String is
/// `value` as given (any bytes): the fuzz target's way into the string parser
/// through the DER path.
pub fn uzi_san(value: &[u8]) -> Vec<u8> {
    tlv(0x30, &other_name(super::OID_UZI_NAME, &tlv(0x16, value)))
}

/// The subjectAltName extension value: a DNS name plus the UZI otherNames.
fn subject_alt_name(opts: &UziCertOptions) -> Vec<u8> {
    let mut names = tlv(0x82, format!("uzi-test-{}.example", opts.ura).as_bytes());
    if !opts.without_uzi_name {
        names.extend(other_name(
            super::OID_UZI_NAME,
            &tlv(0x16, opts.uzi_string().as_bytes()),
        ));
    }
    if let Some(value) = &opts.permanent_identifier {
        let mut seq = tlv(0x0c, value.as_bytes());
        // The assigner: the register's URA arc, under the example arc here.
        seq.extend(oid("2.999.528.1.1007.3.3"));
        names.extend(other_name(
            super::OID_PERMANENT_IDENTIFIER,
            &tlv(0x30, &seq),
        ));
    }
    tlv(0x30, &names)
}

/// Writes the `certs dev --uzi` set into `dir`: `uzi-ca.pem` (the test UZI
/// server CA; put it in `tls.client_ca` and `tls.uzi_server_ca`), and for URA
/// [`DEV_URA_A`] `uzi-server-rsa.pem/.key` (RSA 4096) and
/// `uzi-server-ecdsa.pem/.key` (ECDSA P-256), card type S. Keys are written
/// unencrypted, owner-readable only on Unix.
///
/// # Errors
/// [`TlsError::Io`] naming the file, [`TlsError::Generate`] if rcgen fails.
pub fn write_dev_uzi(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        action: "creating dev PKI directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let ca = UziTestCa::new(TEST_UZI_CA_CN)?;
    write_file(dir, "uzi-ca.pem", &ca.cert_pem(), false)?;
    for (name, rsa) in [("uzi-server-rsa", true), ("uzi-server-ecdsa", false)] {
        let opts = UziCertOptions {
            rsa,
            ..UziCertOptions::server(DEV_URA_A)
        };
        let (cert, key) = ca.client_cert(&opts)?;
        write_file(dir, &format!("{name}.pem"), &cert, false)?;
        write_file(dir, &format!("{name}.key"), &key, true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{describe, load_certs};
    use crate::uzi::{CardType, UziCertificate, UziError};

    #[test]
    fn dev_uzi_writes_rsa_4096_and_ecdsa_server_certificates_that_parse() {
        let dir = tempfile::tempdir().unwrap();
        write_dev_uzi(dir.path()).unwrap();
        let ca = describe(&load_certs(&dir.path().join("uzi-ca.pem")).unwrap()[0]).unwrap();
        assert!(
            ca.subject.contains("TEST - NOT FOR PRODUCTION"),
            "{}",
            ca.subject
        );
        for (name, key_type) in [
            ("uzi-server-rsa", "RSA 4096"),
            ("uzi-server-ecdsa", "ECDSA P-256"),
        ] {
            let der = load_certs(&dir.path().join(format!("{name}.pem"))).unwrap();
            let info = describe(&der[0]).unwrap();
            assert_eq!(info.key_type, key_type);
            assert_eq!(info.issuer, ca.subject);
            let uzi = UziCertificate::from_der(&der[0]).unwrap();
            assert_eq!(uzi.ura().as_str(), DEV_URA_A);
            assert_eq!(uzi.name.card_type, CardType::Server);
            assert_eq!(uzi.name.ca_oid, TEST_UZI_CA_OID);
            assert_eq!(uzi.name.role, "00.000");
            let permanent = uzi.permanent_identifier.unwrap();
            assert_eq!(permanent.value.as_deref(), Some(DEV_URA_A));
            assert_eq!(permanent.assigner.as_deref(), Some("2.999.528.1.1007.3.3"));
        }
    }

    fn der_of(opts: &UziCertOptions) -> Vec<u8> {
        let ca = UziTestCa::new("t").unwrap();
        let (pem, _) = ca.client_cert(opts).unwrap();
        let path = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(path.path(), pem).unwrap();
        load_certs(path.path()).unwrap()[0].to_vec()
    }

    #[test]
    fn card_types_missing_and_mismatching_values_are_told_apart() {
        let person = der_of(&UziCertOptions {
            card_type: 'Z',
            ..UziCertOptions::server("90000002")
        });
        assert_eq!(
            UziCertificate::from_der(&person).unwrap().name.card_type,
            CardType::CareProvider
        );
        let none = der_of(&UziCertOptions {
            without_uzi_name: true,
            ..UziCertOptions::server("90000002")
        });
        assert_eq!(UziCertificate::from_der(&none), Err(UziError::Missing));
        let mismatch = der_of(&UziCertOptions {
            permanent_identifier: Some("90000003".into()),
            ..UziCertOptions::server("90000002")
        });
        assert_eq!(
            UziCertificate::from_der(&mismatch).unwrap_err().code(),
            "UZI_MALFORMED"
        );
        let malformed = der_of(&UziCertOptions {
            raw_uzi_string: Some("2.999.1-1-1-S-9000000x-00.000-00000000".into()),
            ..UziCertOptions::server("90000002")
        });
        assert_eq!(
            UziCertificate::from_der(&malformed).unwrap_err().code(),
            "UZI_MALFORMED"
        );
        // A certificate without any subjectAltName has no UZI value.
        let ca = crate::tls::dev::TestCa::new("plain").unwrap();
        let (pem, _) = ca
            .client_cert("plain", &crate::tls::dev::ClientCertOptions::default())
            .unwrap();
        let path = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(path.path(), pem).unwrap();
        let plain = load_certs(path.path()).unwrap()[0].to_vec();
        assert_eq!(UziCertificate::from_der(&plain), Err(UziError::Missing));
    }

    #[test]
    fn long_lengths_are_encoded_in_long_form() {
        let content = vec![0u8; 300];
        let der = tlv(0x04, &content);
        assert_eq!(&der[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(oid("2.5.5.5"), vec![0x06, 0x03, 0x55, 0x05, 0x05]);
    }
}
