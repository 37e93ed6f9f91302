//! Checks a client certificate an admin wants to register: it must parse, be
//! valid now, and chain to the configured client CA bundle (the same webpki
//! verification the handshake runs, without revocation).
//!
//! Also names why a chain failed verification with a stable code
//! ([`refusal_code`]), for the audit of connections closed after a TLS reload.
//!
//! Must not: register anything or read configuration (callers pass the CA
//! bundle path). Called by the admin service (`AddCertificate`) and
//! `connections` (re-verification after a reload).

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::{check_validity, describe, load_certs, CertInfo, TlsError};

/// Why a client certificate cannot be registered.
#[derive(Debug, thiserror::Error)]
pub enum CertCheckError {
    /// The PEM holds no certificate or does not parse.
    #[error("certificate does not parse: {0}")]
    Parse(String),
    /// Not valid now (expired or not yet valid).
    #[error("certificate is not valid now: {0}")]
    NotValid(String),
    /// Does not chain to the client CA bundle, or is not fit for client auth.
    #[error("certificate does not chain to the client CA bundle: {0}")]
    Untrusted(String),
    /// The CA bundle itself could not be loaded.
    #[error(transparent)]
    Ca(#[from] TlsError),
}

/// Listed in a CRL in force (the end entity or a CA of its chain).
pub const REVOKED_BY_CRL: &str = "CERTIFICATE_REVOKED_BY_CRL";
/// CRLs are configured but none covers a certificate of the chain.
pub const REVOCATION_UNKNOWN: &str = "CERTIFICATE_REVOCATION_UNKNOWN";
/// The CRL covering the chain is past its nextUpdate and `tls.crl_expired = "refuse"`.
pub const CRL_EXPIRED: &str = "CRL_EXPIRED";
/// Expired or not yet valid.
pub const NOT_VALID: &str = "CERTIFICATE_NOT_VALID";
/// Does not chain to the client CA bundle (e.g. its CA was removed), or otherwise fails.
pub const UNTRUSTED: &str = "CERTIFICATE_UNTRUSTED";

/// The stable code for a failed client chain verification.
pub fn refusal_code(error: &rustls::Error) -> &'static str {
    match error {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::Revoked => REVOKED_BY_CRL,
            CertificateError::UnknownRevocationStatus => REVOCATION_UNKNOWN,
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => CRL_EXPIRED,
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => NOT_VALID,
            _ => UNTRUSTED,
        },
        _ => UNTRUSTED,
    }
}

/// Parses `pem` (leaf first, then intermediates) and verifies the leaf as a
/// client certificate against the CA bundle at `client_ca` at time `now`.
///
/// # Errors
/// See [`CertCheckError`].
pub fn verify_client_cert(
    pem: &str,
    client_ca: &Path,
    now: SystemTime,
) -> Result<CertInfo, CertCheckError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertCheckError::Parse(format!("invalid PEM: {e}")))?;
    let Some((leaf, intermediates)) = certs.split_first() else {
        return Err(CertCheckError::Parse("no certificate in the PEM".into()));
    };
    let info = describe(leaf.as_ref()).map_err(|e| CertCheckError::Parse(e.to_string()))?;
    check_validity(&info, now).map_err(CertCheckError::NotValid)?;

    let mut roots = RootCertStore::empty();
    for ca in load_certs(client_ca)? {
        roots.add(ca).map_err(|e| TlsError::Invalid {
            action: "reading client CA bundle",
            path: client_ca.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| TlsError::Invalid {
            action: "building the client certificate verifier from",
            path: client_ca.to_path_buf(),
            reason: e.to_string(),
        })?;
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::since_unix_epoch(since_epoch))
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            ) => CertCheckError::NotValid(e.to_string()),
            e => CertCheckError::Untrusted(e.to_string()),
        })?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::dev::{ClientCertOptions, TestCa};
    use std::time::Duration;

    fn ca_file(ca: &TestCa) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), ca.cert_pem()).unwrap();
        file
    }

    #[test]
    fn accepts_a_certificate_of_the_ca_and_refuses_others() {
        let ca = TestCa::new("verify CA").unwrap();
        let other = TestCa::new("verify CA").unwrap();
        let bundle = ca_file(&ca);
        let now = SystemTime::now();
        let (good, _) = ca.client_cert("c1", &ClientCertOptions::default()).unwrap();
        let info = verify_client_cert(&good, bundle.path(), now).unwrap();
        assert!(info.subject.contains("CN=c1"));

        let (foreign, _) = other
            .client_cert("c1", &ClientCertOptions::default())
            .unwrap();
        assert!(matches!(
            verify_client_cert(&foreign, bundle.path(), now),
            Err(CertCheckError::Untrusted(_))
        ));

        let expired = ClientCertOptions {
            not_before: Some(now - Duration::from_secs(7200)),
            not_after: Some(now - Duration::from_secs(3600)),
            ..ClientCertOptions::default()
        };
        let (old, _) = ca.client_cert("c2", &expired).unwrap();
        assert!(matches!(
            verify_client_cert(&old, bundle.path(), now),
            Err(CertCheckError::NotValid(_))
        ));
        assert!(matches!(
            verify_client_cert("not a pem", bundle.path(), now),
            Err(CertCheckError::Parse(_))
        ));
    }
}
