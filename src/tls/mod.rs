//! TLS material: from PEM files to a verified, mutually authenticated rustls server config.
//!
//! Owns: loading certificates, keys and CRLs from PEM files ([`load_certs`], [`load_key`],
//! [`load_crls`]; a CRL that cannot be used is refused saying why, naming the file);
//! building the one server configuration the gRPC port uses ([`server_config`],
//! [`server_material`]: TLS 1.3/1.2, ring, client certificate *required*, revocation
//! checked along the whole chain, [`CrlExpiredPolicy`], ALPN `h2`), with the client
//! verifier and CRL summaries ([`CrlInfo`]) kept for re-verifying open connections and for
//! the metrics;
//! certificate fingerprints and human-readable descriptions ([`fingerprint`], [`describe`]);
//! and the identity a client presented at the handshake ([`PeerInfo`]).
//! [`acceptor`] runs the TLS accept loop that feeds tonic; [`dev`] generates development and
//! test certificates.
//!
//! Must not: offer any "allow unauthenticated" mode, decide what a client may do (roles come
//! from the identity, later, in the server's interceptor), or read configuration files —
//! callers pass paths.
//!
//! Called by: the server (startup and certificate reload: build new material with
//! [`server_material`], then [`acceptor::TlsAcceptorHandle::install`]), the CLI (`certs dev`,
//! `certs show`, `check-config`), the benchmark's sink, and tests.

pub mod acceptor;
pub mod dev;
pub mod verify;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::server::danger::ClientCertVerifier;
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

/// What the gateway does with a CRL past its nextUpdate (`tls.crl_expired`).
///
/// Either way the expiry is reported: a WARN in the log at every (re)load, the
/// `schakel_crl_expired{file}` metric and a line on the status page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CrlExpiredPolicy {
    /// Keep using the stale CRL (its entries still revoke) and report it. The
    /// default (issue 11's decision): a CA that publishes late must not lock every
    /// supplier of the national switch point out at once; the metric
    /// `schakel_crl_next_update_seconds{file}` lets on-call act before it passes.
    #[default]
    Warn,
    /// Refuse client certificates whose revocation status comes from an expired CRL, at
    /// the handshake and when open connections are re-verified, as OpenSSL (and so
    /// PostgreSQL's `ssl_crl_file`) and BoringSSL (Envoy) verify: for a deployment
    /// that prefers a lock-out to trusting a stale list.
    Refuse,
}

/// One CRL in force, summarised for logs, metrics and the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    /// The file it was read from.
    pub file: PathBuf,
    /// Issuer distinguished name.
    pub issuer: String,
    /// The CRL number, lowercase hex.
    pub number: String,
    /// thisUpdate.
    pub this_update: SystemTime,
    /// nextUpdate, when the CRL has one.
    pub next_update: Option<SystemTime>,
    /// Number of revoked serials listed.
    pub revoked: usize,
}

impl CrlInfo {
    /// Whether the CRL is past its nextUpdate at `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        self.next_update.is_some_and(|next| now > next)
    }
}

/// Reads every CRL in each of the PEM files, checking that each one parses as a CRL the
/// verifier can use (version 2, with a CRL number).
///
/// # Errors
/// [`TlsError::Io`] if a file cannot be read, [`TlsError::Invalid`] naming the file and saying
/// what is wrong: not PEM, no CRL in it (e.g. a certificate), not an X.509 CRL, a version 1
/// CRL, no CRL number extension.
pub fn load_crls(
    paths: &[PathBuf],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    Ok(load_crl_files(paths, None)?
        .into_iter()
        .map(|(der, _)| der)
        .collect())
}

/// [`load_crls`], and with `cas` (the client CA bundle and its path) also: each CRL's issuer
/// is a CA in the bundle, that CA may sign CRLs, and the CRL's signature verifies with its key.
fn load_crl_files(
    paths: &[PathBuf],
    cas: Option<(&[CertificateDer<'static>], &Path)>,
) -> Result<Vec<(CertificateRevocationListDer<'static>, CrlInfo)>, TlsError> {
    const ACTION: &str = "reading CRL";
    let mut crls = Vec::new();
    for path in paths {
        let pem = read_file(ACTION, path)?;
        let found = CertificateRevocationListDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(ACTION, path, format!("not valid PEM: {e}")))?;
        if found.is_empty() {
            let why = if CertificateDer::pem_slice_iter(&pem).any(|c| c.is_ok()) {
                "no CRLs found: the file holds a certificate, not a CRL \
                 (expected -----BEGIN X509 CRL-----)"
            } else {
                "no CRLs found (expected PEM blocks -----BEGIN X509 CRL-----)"
            };
            return Err(invalid(ACTION, path, why));
        }
        for (i, der) in found.into_iter().enumerate() {
            let info = check_crl(der.as_ref(), path, cas)
                .map_err(|why| invalid(ACTION, path, format!("CRL #{}: {why}", i + 1)))?;
            crls.push((der, info));
        }
    }
    Ok(crls)
}

/// Why one DER CRL cannot be used, in words; else its summary.
fn check_crl(
    der: &[u8],
    path: &Path,
    cas: Option<(&[CertificateDer<'static>], &Path)>,
) -> Result<CrlInfo, String> {
    use x509_parser::prelude::FromDer;
    let (rest, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der)
        .map_err(|e| format!("not an X.509 CRL ({e})"))?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes after the CRL", rest.len()));
    }
    let issuer = crl.issuer().to_string();
    if crl.version() != Some(x509_parser::x509::X509Version::V2) {
        return Err(format!(
            "issued by {issuer} is a version 1 CRL; the verifier needs a version 2 CRL \
             with a CRL number extension (RFC 5280 5.2.3)"
        ));
    }
    // webpki needs the extensions field (RFC 5280 5.2: a CRL number and an authority key
    // identifier are required); it tolerates a CRL number's absence among other extensions.
    let number = match crl.crl_number() {
        Some(number) => {
            let number = number.to_bytes_be();
            if number.len() > 20 {
                return Err(format!(
                    "issued by {issuer} has a CRL number longer than 20 octets (RFC 5280 5.2.3)"
                ));
            }
            hex::encode(number)
        }
        None if crl.extensions().is_empty() => {
            return Err(format!(
                "issued by {issuer} has no CRL number extension (RFC 5280 5.2.3) and no \
                 extensions at all, which the verifier requires; have the CA publish it \
                 with a CRL number"
            ));
        }
        None => {
            tracing::warn!(
                file = %path.display(),
                %issuer,
                "CRL has no CRL number extension (RFC 5280 5.2.3); used anyway"
            );
            String::new()
        }
    };
    if let Some((bundle, bundle_path)) = cas {
        // Of the CAs of that name (two may share one), the one whose key signed the CRL.
        let named: Vec<_> = bundle
            .iter()
            .filter_map(|ca| {
                let (_, cert) = x509_parser::parse_x509_certificate(ca.as_ref()).ok()?;
                (cert.subject().as_raw() == crl.issuer().as_raw()).then_some(cert)
            })
            .collect();
        let ca = named
            .iter()
            .find(|ca| crl.verify_signature(ca.public_key()).is_ok())
            .or(named.first());
        match ca {
            // An intermediate CA the clients send: webpki checks the signature at use.
            None => tracing::info!(
                file = %path.display(),
                %issuer,
                "CRL issuer is not in the client CA bundle: it applies to chains through \
                 an intermediate CA of that name; its signature is checked at the handshake"
            ),
            Some(ca) => {
                if let Ok(Some(usage)) = ca.key_usage() {
                    if !usage.value.crl_sign() {
                        return Err(format!(
                            "issued by {issuer}, whose CA certificate in {} may not sign \
                             CRLs (no cRLSign key usage)",
                            bundle_path.display()
                        ));
                    }
                }
                crl.verify_signature(ca.public_key()).map_err(|e| {
                    format!(
                        "the signature does not verify with the key of {issuer} in the \
                         client CA bundle {} ({e}): the CRL was signed by another CA of \
                         that name or was altered",
                        bundle_path.display()
                    )
                })?;
            }
        }
    }
    Ok(summary(&crl, path, issuer, number))
}

fn summary(
    crl: &x509_parser::revocation_list::CertificateRevocationList<'_>,
    path: &Path,
    issuer: String,
    number: String,
) -> CrlInfo {
    CrlInfo {
        file: path.to_path_buf(),
        issuer,
        number,
        this_update: unix_to_system_time(crl.last_update().timestamp()),
        next_update: crl
            .next_update()
            .map(|t| unix_to_system_time(t.timestamp())),
        revoked: crl.iter_revoked_certificates().count(),
    }
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
    /// What to do with a CRL past its nextUpdate.
    pub crl_expired: CrlExpiredPolicy,
}

/// Everything [`server_material`] built from the files, validated as a whole.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The server config new handshakes use.
    pub config: Arc<ServerConfig>,
    /// The client certificate verifier inside `config`, kept to re-verify the chains of
    /// open connections after a reload.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The server certificate presented.
    pub server: CertInfo,
    /// Certificates in the client CA bundle.
    pub client_cas: usize,
    /// The CRLs in force.
    pub crls: Vec<CrlInfo>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("server", &self.server)
            .field("client_cas", &self.client_cas)
            .field("crls", &self.crls)
            .finish_non_exhaustive()
    }
}

/// Builds the server config: TLS 1.3 and 1.2 only (explicit protocol versions), ring provider,
/// client certificate REQUIRED and verified against the client CA bundle (WebPkiClientVerifier,
/// with the CRLs if any), ALPN "h2", the key must match the certificate, and the server
/// certificate must be currently valid (not expired / not yet valid) -> else an error.
/// See [`server_material`] for revocation.
///
/// # Errors
/// As [`server_material`].
pub fn server_config(files: &ServerTlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    server_material(files).map(|m| m.config)
}

/// [`server_config`], with the client verifier and summaries of what it put in force.
///
/// Revocation: with CRLs, every certificate of the client's chain below the trust anchor is
/// checked (the end entity and its intermediates), and a certificate whose issuer has no CRL
/// among them is refused (unknown revocation status is an error, as in Envoy: once CRLs are
/// configured, every CA of a chain needs one). A CRL past its nextUpdate is used and reported
/// ([`CrlExpiredPolicy::Warn`]) or makes the certificates it covers refused
/// ([`CrlExpiredPolicy::Refuse`]). Without CRLs no revocation check is made. Each CRL must be
/// issued by a CA in the client CA bundle and verify with its key.
///
/// Any RSA (2048..8192 bits) or ECDSA (P-256, P-384) client certificate chaining to the bundle
/// is accepted; the client's identity is read from it by the acceptor ([`PeerInfo`]).
///
/// # Errors
/// [`TlsError::Io`] / [`TlsError::Invalid`] naming the file that is missing, unreadable, empty,
/// malformed, a key that does not match the certificate, a server certificate that is expired
/// or not yet valid, a CA bundle rustls cannot use as trust anchors, a CRL that cannot be used
/// (saying why); [`TlsError::Config`] if rustls refuses the protocol versions.
pub fn server_material(files: &ServerTlsFiles) -> Result<TlsMaterial, TlsError> {
    const CERT: &str = "reading server certificate";
    const KEY: &str = "reading server key";
    const CA: &str = "reading client CA bundle";

    let certs = load_certs_as(CERT, &files.cert)?;
    let key = load_key_as(KEY, &files.key)?;
    let leaf = describe(certs[0].as_ref()).map_err(|e| invalid(CERT, &files.cert, e))?;
    check_validity(&leaf, SystemTime::now())
        .map_err(|reason| invalid("checking server certificate", &files.cert, reason))?;

    let cas = load_certs_as(CA, &files.client_ca)?;
    let mut roots = RootCertStore::empty();
    for (i, ca) in cas.iter().enumerate() {
        roots.add(ca.clone()).map_err(|e| {
            invalid(
                CA,
                &files.client_ca,
                format!("certificate #{} is not a usable trust anchor: {e}", i + 1),
            )
        })?;
    }
    let (crls, crl_infos): (Vec<_>, Vec<_>) =
        load_crl_files(&files.crls, Some((&cas, &files.client_ca)))?
            .into_iter()
            .unzip();
    let now = SystemTime::now();
    for crl in crl_infos.iter().filter(|c| c.expired_at(now)) {
        tracing::warn!(
            file = %crl.file.display(),
            issuer = %crl.issuer,
            next_update = %format_time(crl.next_update),
            policy = ?files.crl_expired,
            "CRL is past its nextUpdate: publish a fresh one"
        );
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .with_crls(crls);
    if files.crl_expired == CrlExpiredPolicy::Refuse {
        builder = builder.enforce_revocation_expiration();
    }
    let verifier = builder.build().map_err(|e| match e {
        // The checks above catch what they can name; this is what webpki still refuses.
        rustls::server::VerifierBuilderError::InvalidCrl(crl) => TlsError::Invalid {
            action: "reading CRL",
            path: files.crls.first().cloned().unwrap_or_default(),
            reason: format!(
                "a CRL of tls.crls ({}) cannot be used: {}",
                files
                    .crls
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                crl_error_words(&crl)
            ),
        },
        e => invalid(
            "building the client certificate verifier from",
            &files.client_ca,
            e,
        ),
    })?;

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config {
            reason: e.to_string(),
        })?
        .with_client_cert_verifier(verifier.clone())
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
    Ok(TlsMaterial {
        config: Arc::new(config),
        verifier,
        server: leaf,
        client_cas: cas.len(),
        crls: crl_infos,
    })
}

/// What a CRL error of the verifier means, in words.
fn crl_error_words(e: &rustls::CertRevocationListError) -> String {
    use rustls::CertRevocationListError as E;
    match e {
        E::ParseError => "it does not parse as an RFC 5280 CRL (e.g. no extensions)".into(),
        E::UnsupportedCrlVersion => "only version 2 CRLs are supported".into(),
        E::UnsupportedCriticalExtension => "it has a critical extension the verifier does not \
             support"
            .into(),
        E::UnsupportedDeltaCrl => "delta CRLs are not supported; configure the full CRL".into(),
        E::UnsupportedIndirectCrl => "indirect CRLs are not supported".into(),
        E::UnsupportedRevocationReason => "it lists an unsupported revocation reason".into(),
        E::InvalidCrlNumber => "its CRL number is not a non-negative integer of at most 20 \
             octets"
            .into(),
        E::InvalidRevokedCertSerialNumber => "it lists an invalid serial number".into(),
        other => format!("{other:?}"),
    }
}

/// RFC 3339 (seconds), or "none".
pub fn format_time(t: Option<SystemTime>) -> String {
    t.map_or_else(
        || "none".to_owned(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    )
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
            crl_expired: CrlExpiredPolicy::Warn,
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
    fn crl_checks_name_the_file_and_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = dev_files(dir.path());
        let ca_pem = std::fs::read_to_string(&files.client_ca).unwrap();
        // The dev CA's own key is not at hand here: a CA with the same name, other key.
        let impostor = TestCa::new("Schakel DEV CA - NOT FOR PRODUCTION").unwrap();
        let unrelated = TestCa::new("unrelated CA").unwrap();
        for (name, contents, why) in [
            (
                "cert.pem",
                ca_pem.clone(),
                "the file holds a certificate, not a CRL",
            ),
            (
                "text.pem",
                "hello".to_owned(),
                "no CRLs found (expected PEM blocks",
            ),
            (
                "broken.pem",
                "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n".to_owned(),
                "CRL #1: not an X.509 CRL",
            ),
            (
                "impostor.pem",
                impostor.crl_pem(&[]).unwrap(),
                "CRL #1: the signature does not verify with the key of",
            ),
        ] {
            files.crls = vec![write(dir.path(), name, &contents)];
            let err = server_config(&files).unwrap_err().to_string();
            assert!(err.starts_with("reading CRL "), "{err}");
            assert!(err.contains(name), "{err}");
            assert!(err.contains(why), "{name}: {err}");
        }
        // A CRL of a CA outside the bundle (an intermediate the clients send) is usable.
        files.crls = vec![write(
            dir.path(),
            "other.pem",
            &unrelated.crl_pem(&[1]).unwrap(),
        )];
        let material = server_material(&files).unwrap();
        assert_eq!(material.crls.len(), 1);
        assert_eq!(material.crls[0].revoked, 1);
        assert!(material.crls[0].issuer.contains("CN=unrelated CA"));
        assert!(!material.crls[0].expired_at(SystemTime::now()));
    }

    #[test]
    fn a_crl_with_extensions_but_no_crl_number_is_used_as_webpki_does() {
        // A v2 CRL of "CN=CRL fixture CA" with only an authority key identifier
        // (made once with Python `cryptography`).
        const AKI_ONLY: &str = "-----BEGIN X509 CRL-----
MIHFMG0CAQEwCgYIKoZIzj0EAwIwGTEXMBUGA1UEAwwOQ1JMIGZpeHR1cmUgQ0EX
DTI2MDEwMTAwMDAwMFoXDTM1MTIzMDAwMDAwMFqgIzAhMB8GA1UdIwQYMBaAFDrL
Yi46fynywa88hlAksk8lvqWBMAoGCCqGSM49BAMCA0gAMEUCIG1Q64ZhS+xPuOJk
NSuvKxxgn+KBYM9NzVNCumO4W481AiEAlfEAH2dBcOm7dib0ohZOvdghJlQMyETg
ZZJxp+J1aVg=
-----END X509 CRL-----
";
        let dir = tempfile::tempdir().unwrap();
        let mut files = dev_files(dir.path());
        files.crls = vec![write(dir.path(), "aki-only.pem", AKI_ONLY)];
        let material = server_material(&files).unwrap();
        assert_eq!(material.crls[0].number, "");
        assert!(material.crls[0].issuer.contains("CN=CRL fixture CA"));
    }

    #[test]
    fn an_expired_crl_is_summarised_as_expired() {
        let ca = TestCa::new("expired CRL CA").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let next = now - Duration::from_secs(60);
        let pem = ca
            .crl_pem_with(
                &[],
                &dev::CrlOptions {
                    this_update: Some(now - Duration::from_secs(3600)),
                    next_update: Some(next),
                },
            )
            .unwrap();
        let path = write(dir.path(), "old.pem", &pem);
        let (_, info) = load_crl_files(std::slice::from_ref(&path), None)
            .unwrap()
            .remove(0);
        assert!(info.expired_at(now));
        assert_eq!(
            info.next_update
                .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs()),
            Some(next.duration_since(UNIX_EPOCH).unwrap().as_secs())
        );
        assert_eq!(info.file, path);
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
