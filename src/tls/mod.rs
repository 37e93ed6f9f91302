//! TLS material: from PEM files to a verified, mutually authenticated rustls server config.
//!
//! Owns: loading certificates, keys and CRLs from PEM files ([`load_certs`], [`load_key`],
//! [`load_crls`]); building the one server configuration the gRPC port uses
//! ([`server_config`]: TLS 1.3/1.2, ring, client certificate *required*, ALPN `h2`);
//! certificate fingerprints and human-readable descriptions ([`fingerprint`], [`describe`]);
//! and the identity a client presented at the handshake ([`PeerInfo`]).
//! [`acceptor`] runs the TLS accept loop that feeds tonic; [`dev`] generates development and
//! test certificates.
//!
//! Must not: offer any "allow unauthenticated" mode, decide what a client may do (roles come
//! from the identity, later, in the server's interceptor), or read configuration files —
//! callers pass paths.
//!
//! Called by: the server (startup and certificate reload: build a new config with
//! [`server_config`], then [`acceptor::TlsAcceptorHandle::swap`]), the CLI (`certs dev`,
//! `certs show`), and tests.

pub mod acceptor;
pub mod dev;
pub mod verify;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

pub use acceptor::{incoming, AcceptLimits, HandshakeCounts, TlsAcceptorHandle, TlsConn};

/// The ALPN protocol the gRPC port speaks.
const ALPN_H2: &[u8] = b"h2";

/// Everything that can go wrong turning files into TLS configuration.
///
/// Each message says what was being done, to which path, and why, e.g.
/// `reading client CA bundle certs-dev/ca.pem: no certificates found`.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "reading server key".
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A file was read but its contents are unusable.
    #[error("{action} {}: {reason}", path.display())]
    Invalid {
        /// What was being done, e.g. "reading client CA bundle".
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// Why it is unusable.
        reason: String,
    },
    /// A DER certificate given in memory could not be parsed.
    #[error("parsing certificate: {reason}")]
    Certificate {
        /// Why parsing failed.
        reason: String,
    },
    /// rustls refused a configuration not tied to one file.
    #[error("building server TLS config: {reason}")]
    Config {
        /// Why rustls refused it.
        reason: String,
    },
    /// rcgen could not generate a key, certificate or CRL.
    #[error("generating {what}: {source}")]
    Generate {
        /// What was being generated, e.g. "client certificate supplier-a".
        what: String,
        /// The underlying rcgen error.
        source: rcgen::Error,
    },
}

fn read_file(action: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        action,
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(action: &'static str, path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::Invalid {
        action,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn load_certs_as(
    action: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(action, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(action, path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(action, path, "no certificates found"));
    }
    Ok(certs)
}

fn load_key_as(action: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(action, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => invalid(
            action,
            path,
            "no private key found (expected PKCS#8, PKCS#1 or SEC1 PEM)",
        ),
        e => invalid(action, path, format!("invalid PEM: {e}")),
    })
}

/// Reads every certificate in a PEM file, in file order.
///
/// # Errors
/// [`TlsError::Io`] if the file cannot be read, [`TlsError::Invalid`] if its PEM is malformed
/// or it holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    load_certs_as("reading certificates", path)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
///
/// # Errors
/// [`TlsError::Io`] if the file cannot be read, [`TlsError::Invalid`] if its PEM is malformed
/// or it holds no private key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    load_key_as("reading private key", path)
}

/// Reads every CRL in each of the PEM files, checking that each one parses as a CRL.
///
/// # Errors
/// [`TlsError::Io`] if a file cannot be read, [`TlsError::Invalid`] naming the file if its PEM
/// is malformed, it holds no CRL, or a CRL does not parse.
pub fn load_crls(
    paths: &[PathBuf],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    const ACTION: &str = "reading CRL";
    let mut crls = Vec::new();
    for path in paths {
        let pem = read_file(ACTION, path)?;
        let found = CertificateRevocationListDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(ACTION, path, format!("invalid PEM: {e}")))?;
        if found.is_empty() {
            return Err(invalid(ACTION, path, "no CRLs found"));
        }
        for (i, crl) in found.iter().enumerate() {
            x509_parser::parse_x509_crl(crl.as_ref()).map_err(|e| {
                invalid(ACTION, path, format!("CRL #{} does not parse: {e}", i + 1))
            })?;
        }
        crls.extend(found);
    }
    Ok(crls)
}

/// SHA-256 of the DER certificate, lowercase hex (64 chars).
pub fn fingerprint(cert_der: &[u8]) -> String {
    hex::encode(Sha256::digest(cert_der))
}

/// A certificate, summarised for logs, `certs show` and expiry metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    /// Subject distinguished name, e.g. `CN=supplier-a, O=Schakel dev`.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial number: lowercase hex of its big-endian value, without leading zero bytes
    /// (`"1234"` for serial 0x1234; `"00"` for zero).
    pub serial: String,
    /// [`fingerprint`] of the certificate.
    pub fingerprint: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Best effort: "RSA 4096", "ECDSA P-256", "Ed25519", else the algorithm OID.
    pub key_type: String,
}

fn unix_to_system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Bits in a big-endian unsigned integer, ignoring leading zero bytes and bits.
fn bit_length(be: &[u8]) -> usize {
    let trimmed = match be.iter().position(|b| *b != 0) {
        Some(i) => &be[i..],
        None => return 0,
    };
    trimmed.len() * 8 - trimmed[0].leading_zeros() as usize
}

fn key_type(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> String {
    use x509_parser::public_key::PublicKey;
    let alg = spki.algorithm.algorithm.to_id_string();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => format!("RSA {}", bit_length(rsa.modulus)),
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => "ECDSA P-256".to_owned(),
                Some("1.3.132.0.34") => "ECDSA P-384".to_owned(),
                Some("1.3.132.0.35") => "ECDSA P-521".to_owned(),
                Some(other) => format!("ECDSA {other}"),
                None => "ECDSA".to_owned(),
            }
        }
        _ if alg == "1.3.101.112" => "Ed25519".to_owned(),
        _ => alg,
    }
}

fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex::encode(&raw[start..])
}

/// Parses a DER certificate into a [`CertInfo`].
///
/// # Errors
/// [`TlsError::Certificate`] if the bytes are not a single X.509 certificate.
pub fn describe(cert_der: &[u8]) -> Result<CertInfo, TlsError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| TlsError::Certificate {
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(TlsError::Certificate {
            reason: format!("{} trailing bytes after the certificate", rest.len()),
        });
    }
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: serial_hex(cert.raw_serial()),
        fingerprint: fingerprint(cert_der),
        not_before: unix_to_system_time(cert.validity().not_before.timestamp()),
        not_after: unix_to_system_time(cert.validity().not_after.timestamp()),
        key_type: key_type(cert.public_key()),
    })
}

/// Paths of the server's TLS material.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles {
    /// The server certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The CA bundle client certificates must chain to (PEM). Separate from the server's own
    /// trust roots.
    pub client_ca: PathBuf,
    /// CRLs (PEM) checked against client certificates; may be empty.
    pub crls: Vec<PathBuf>,
}

/// Builds the server config: TLS 1.3 and 1.2 only (explicit protocol versions), ring provider,
/// client certificate REQUIRED and verified against the client CA bundle (WebPkiClientVerifier,
/// with the CRLs if any), ALPN "h2", the key must match the certificate, and the server
/// certificate must be currently valid (not expired / not yet valid) -> else an error.
///
/// Revocation: with CRLs, the client's end-entity certificate is checked (not its
/// intermediates), and a client whose issuer has no CRL among them is refused (unknown
/// revocation status is an error). A CRL past its nextUpdate is still used. Without CRLs no
/// revocation check is made.
///
/// Any RSA (2048..8192 bits) or ECDSA (P-256, P-384) client certificate chaining to the bundle
/// is accepted; the client's identity is read from it by the acceptor ([`PeerInfo`]).
///
/// # Errors
/// [`TlsError::Io`] / [`TlsError::Invalid`] naming the file that is missing, unreadable, empty,
/// malformed, a key that does not match the certificate, a server certificate that is expired
/// or not yet valid, a CA bundle rustls cannot use as trust anchors; [`TlsError::Config`] if
/// rustls refuses the protocol versions.
pub fn server_config(files: &ServerTlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    const CERT: &str = "reading server certificate";
    const KEY: &str = "reading server key";
    const CA: &str = "reading client CA bundle";

    let certs = load_certs_as(CERT, &files.cert)?;
    let key = load_key_as(KEY, &files.key)?;
    let leaf = describe(certs[0].as_ref()).map_err(|e| invalid(CERT, &files.cert, e))?;
    check_validity(&leaf, SystemTime::now())
        .map_err(|reason| invalid("checking server certificate", &files.cert, reason))?;

    let mut roots = RootCertStore::empty();
    for (i, ca) in load_certs_as(CA, &files.client_ca)?.into_iter().enumerate() {
        roots.add(ca).map_err(|e| {
            invalid(
                CA,
                &files.client_ca,
                format!("certificate #{} is not a usable trust anchor: {e}", i + 1),
            )
        })?;
    }
    let crls = load_crls(&files.crls)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| {
            invalid(
                "building the client certificate verifier from",
                &files.client_ca,
                e,
            )
        })?;

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config {
            reason: e.to_string(),
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => invalid(
                "checking server key",
                &files.key,
                format!(
                    "the private key does not match the certificate in {}",
                    files.cert.display()
                ),
            ),
            e => invalid(KEY, &files.key, e),
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// `Err(reason)` unless `now` lies within the certificate's validity.
fn check_validity(info: &CertInfo, now: SystemTime) -> Result<(), String> {
    if now < info.not_before {
        return Err(format!(
            "not valid before {} ({})",
            humantime::format_rfc3339_seconds(info.not_before),
            info.subject
        ));
    }
    if now > info.not_after {
        return Err(format!(
            "expired at {} ({})",
            humantime::format_rfc3339_seconds(info.not_after),
            info.subject
        ));
    }
    Ok(())
}

/// The client certificate's identity as seen at the handshake.
///
/// Every request on the connection carries it in its extensions
/// (`request.extensions().get::<PeerInfo>()`), put there by tonic from [`TlsConn`]'s
/// `Connected::connect_info`.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The client's TCP address.
    pub remote_addr: SocketAddr,
    /// [`fingerprint`] of the client's end-entity certificate.
    pub fingerprint: String,
    /// Subject distinguished name of that certificate.
    pub subject: String,
    /// End of that certificate's validity.
    pub not_after: SystemTime,
    /// That certificate, DER (read by the `ura` identity policy, `crate::uzi::policy`).
    pub cert_der: Arc<[u8]>,
}

#[cfg(test)]
mod tests {
    use super::dev::{write_dev_pki, ClientCertOptions, TestCa};
    use super::*;

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn dev_files(dir: &Path) -> ServerTlsFiles {
        write_dev_pki(dir).unwrap();
        ServerTlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: dir.join("ca.pem"),
            crls: vec![],
        }
    }

    fn first_cert_der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn fingerprint_is_64_lowercase_hex_and_stable() {
        let ca = TestCa::new("fp CA").unwrap();
        let der = first_cert_der(&ca.cert_pem());
        let fp = fingerprint(&der);
        assert_eq!(fp.len(), 64);
        assert!(fp
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_eq!(fp, fingerprint(&der));
        assert_eq!(
            fingerprint(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn describe_gives_cn_validity_serial_and_key_type() {
        let ca = TestCa::new("describe CA").unwrap();
        let not_after = UNIX_EPOCH + Duration::from_secs(4_000_000_000);
        let (pem, _) = ca
            .client_cert(
                "supplier-a",
                &ClientCertOptions {
                    not_after: Some(not_after),
                    serial: Some(0x1234),
                    ..Default::default()
                },
            )
            .unwrap();
        let der = first_cert_der(&pem);
        let info = describe(&der).unwrap();
        assert!(info.subject.contains("CN=supplier-a"), "{}", info.subject);
        assert!(info.subject.contains("O=Schakel dev"), "{}", info.subject);
        assert!(info.issuer.contains("CN=describe CA"), "{}", info.issuer);
        assert_eq!(info.not_after, not_after);
        assert!(info.not_before < SystemTime::now());
        assert_eq!(info.serial, "1234");
        assert_eq!(info.fingerprint, fingerprint(&der));
        assert_eq!(info.key_type, "ECDSA P-256");

        let rsa = ClientCertOptions {
            rsa: true,
            ..Default::default()
        };
        let (pem, _) = ca.client_cert("supplier-rsa", &rsa).unwrap();
        assert_eq!(
            describe(&first_cert_der(&pem)).unwrap().key_type,
            "RSA 2048"
        );

        assert!(matches!(
            describe(b"not a certificate"),
            Err(TlsError::Certificate { .. })
        ));
    }

    #[test]
    fn server_config_builds_from_dev_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = server_config(&dev_files(dir.path())).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        // rustls does not expose the enabled versions; the handshake tests in `acceptor`
        // show that TLS 1.2 and 1.3 clients both connect.
    }

    #[test]
    fn server_config_with_crl_builds() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = dev_files(dir.path());
        let ca = TestCa::new("other CA").unwrap();
        files.crls = vec![write(dir.path(), "crl.pem", &ca.crl_pem(&[7]).unwrap())];
        server_config(&files).unwrap();
        assert_eq!(load_crls(&files.crls).unwrap().len(), 1);
    }

    #[test]
    fn server_config_refuses_a_missing_file_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = dev_files(dir.path());
        files.client_ca = dir.path().join("nope.pem");
        let err = server_config(&files).unwrap_err().to_string();
        assert!(err.starts_with("reading client CA bundle "), "{err}");
        assert!(err.contains("nope.pem"), "{err}");

        let mut files = dev_files(dir.path());
        files.crls = vec![dir.path().join("missing-crl.pem")];
        let err = server_config(&files).unwrap_err().to_string();
        assert!(
            err.contains("reading CRL") && err.contains("missing-crl.pem"),
            "{err}"
        );
    }

    #[test]
    fn server_config_refuses_a_key_that_does_not_match() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = dev_files(dir.path());
        files.key = dir.path().join("supplier-a.key");
        let err = server_config(&files).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
        assert!(err.contains("supplier-a.key"), "{err}");
    }

    #[test]
    fn server_config_refuses_an_expired_or_future_server_cert() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = dev_files(dir.path());
        let ca = TestCa::new("expiry CA").unwrap();
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        for (name, opts, why) in [
            (
                "expired",
                ClientCertOptions {
                    not_before: Some(now - 10 * day),
                    not_after: Some(now - day),
                    ..Default::default()
                },
                "expired at",
            ),
            (
                "future",
                ClientCertOptions {
                    not_before: Some(now + day),
                    not_after: Some(now + 10 * day),
                    ..Default::default()
                },
                "not valid before",
            ),
        ] {
            let (cert, key) = ca.server_cert_with(&opts).unwrap();
            files.cert = write(dir.path(), &format!("{name}.pem"), &cert);
            files.key = write(dir.path(), &format!("{name}.key"), &key);
            let err = server_config(&files).unwrap_err().to_string();
            assert!(err.starts_with("checking server certificate"), "{err}");
            assert!(err.contains(why), "{err}");
            assert!(err.contains(&format!("{name}.pem")), "{err}");
        }
    }

    #[test]
    fn server_config_refuses_a_client_ca_without_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = dev_files(dir.path());
        files.client_ca = write(dir.path(), "empty-ca.pem", "# nothing here\n");
        let err = server_config(&files).unwrap_err().to_string();
        assert!(
            err.starts_with("reading client CA bundle ")
                && err.ends_with("empty-ca.pem: no certificates found"),
            "{err}"
        );
        // A key is not a certificate either.
        files.client_ca = dir.path().join("ca.key");
        let err = server_config(&files).unwrap_err().to_string();
        assert!(err.ends_with("ca.key: no certificates found"), "{err}");
    }

    #[test]
    fn load_key_and_crls_refuse_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write(dir.path(), "empty.pem", "");
        let err = load_key(&empty).unwrap_err().to_string();
        assert!(err.contains("no private key found"), "{err}");
        let err = load_crls(std::slice::from_ref(&empty))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no CRLs found"), "{err}");
        assert!(load_crls(&[]).unwrap().is_empty());
    }

    #[test]
    fn bit_length_ignores_leading_zeros() {
        assert_eq!(bit_length(&[0, 0x80, 0]), 16);
        assert_eq!(bit_length(&[0x01]), 1);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(serial_hex(&[0, 0x80, 1]), "8001");
        assert_eq!(serial_hex(&[0]), "00");
        assert_eq!(serial_hex(&[]), "");
    }
}
