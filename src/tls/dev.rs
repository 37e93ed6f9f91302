//! Development and test PKI, generated with rcgen.
//!
//! Owns: the dev certificate set written by `schakel certs dev` ([`write_dev_pki`]) and the
//! [`TestCa`] helper that unit tests, integration tests (`tests/`) and the benchmark use to
//! make servers, clients, expired or foreign certificates and CRLs on the fly.
//!
//! Must not: be used for production material. Keys are written unencrypted, RSA test
//! certificates all share one key that is published in this file, and nothing here checks
//! policy. Production certificates (UZI, RSA 4096) come from a real CA and are only *read*, by
//! the parent module.
//!
//! Called by: the CLI (`certs dev` -> `write_dev_pki(Path::new("certs-dev"))`) and tests.

use std::path::Path;
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::TlsError;

/// The roles of the dev PKI, each written as `<name>.pem` (certificate) and `<name>.key` (PKCS#8 key).
pub const DEV_CLIENTS: &[&str] = &["supplier-a", "supplier-b", "registry", "admin"];

/// Common name of the dev CA.
const DEV_CA_CN: &str = "Schakel DEV CA - NOT FOR PRODUCTION";
/// Organisation of every dev client certificate.
const DEV_ORG: &str = "Schakel dev";
/// Validity of generated certificates: five years (with leap days) from a day ago.
const VALID_DAYS: i64 = 5 * 365 + 2;

/// The one RSA 2048 key used for every RSA test certificate (`ClientCertOptions::rsa`).
///
/// rcgen with the ring backend cannot generate RSA keys, so this PKCS#8 key was generated once
/// with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`. It is PUBLIC: test
/// use only, never trust a certificate carrying it.
const TEST_RSA_2048_KEY_PEM: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDoLWAWEvltYFS9
glWLGFgr29wwNJnvPy8sptKIXha9fWFD8oy7JU8hsd/u9kfzWpdIpaISMUj7KJEq
Iwb9+pUv4cxhATvUiNbYEg80FL4I8EDESRBRT4eocz6f+R3F88Kfk6jrg3bS5mmK
vezFx4ddLKLBksQeFcuBNFe2uScNKD2m6v9NaDOcCCR5cGIzCTsUwflOQQOX5HoN
/D/ZiJIh5tMBnxMpGuHlT0aajYzntqWfxSZ5r60sNDdhE7CXuZJz483ZjkDGmp8O
8Zv3tD9Ta/PH9a9DOs68WQOMekPSAWcVssJnr9alRKaBa1qscLjSYwZMassUrijM
Xa+6xrE7AgMBAAECggEAE+DGqD0po8aqmqsM/eKwsdiaCnqGb2hedpk1zz0W/1Q7
vqCGkgNIuh7LiF8Hm/s2lp6vuJUFpZM8knn7QEVy/m17nRaI89JfapJpQNFBz+wZ
73Q99Gg1uiNbykB+3xLWp+jxfnB7/OSDRsCqA+joWv7WVHJnXhgJm19K3zcM8+BD
WZYc7nH+q+hWzihJYLF9ireFD+ywfmknp3tRzAPxG1UJoqM+Ee4rmiM8QYI9+I1x
qszx2rWuLmljyNUH1hJznwSEx7UpvhA90/295mz/Gc2n3PDWK6sQrbCcsC23BwKG
sGh97FxGhSdje6HoxVLo9NWknCiX0mXjzhLUrxcoIQKBgQD8VfQi5LT+snF7+6E3
nocSfQ8/4nNxvtTDzL3xAzX59eRSIaHg18aNG+fGxfm2LWNVkeMKv5qPtwZZQsep
cpLLoijb8NNiQiCEIE7voYKIFawK2zmIiemozoZs1cB4KKjVsP8qyAB1w63e062L
tBEEutnfRKoyOC2xDB0VuZH7awKBgQDrjHu9860WcIu4qmFedM4olUb4CyK7XJ0C
MN2Ge+gOJRF4REcTg15j1C3bgIOewXg2ifRUCyIT06RM4ol/3QF4O2+saZOciKzY
Q5AEhYL+stVqD5sdKlGK/7G4wmMlGTFA0r1unSqpZ6NvQdI63KYLPyf/TN1LwY0B
W000flDlcQKBgQDTazj4G2PCmsQWu0fikAJf7URfpF5RiTA/NUZXrvcEjY9VeTRm
bKPBCwZxNuL4TqMRyP/Pu6XGj/TTyO38/TAdSaquTOLvSrRvv5ojkNELMA1Ls05L
JjIN66wZeCahBoAfOwMwVw57nQ4KypR3ntE7g0qUlLV9CjDOTHX6A9daLQKBgQCN
qMFKrd/s3ObKun0wh2Ls+UnjJx9OOxaaGLVBigc3aoelIrr0O09rDlI97n453fTk
J/dvC/sEnYX0T1GOOmYF3wj8Ucpam8AHmCpm7byoXPkIfjY1RhwgUkKZ8R4bU5lR
eOxAN/lORGwAHz/F8qlRnjv5yEpWoyKgLD60UTtpoQKBgFMlLeKSXuSa+JRkDz6o
ycabPpXx+8PsVj0Hnkzv8fWbFeBytmQUyV4fAqBkfWr3YtlcxRE26vH8pCNGryVT
xmv00GQKDhBnLGYV//7ZlXbtZc2zG7etQuRAWq2J1fISU7SJpLXRQEjQITqGBRSl
XKGtKcf47T314qxpJxbA06/O
-----END PRIVATE KEY-----
";

fn gen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> TlsError {
    let what = what.into();
    move |source| TlsError::Generate { what, source }
}

/// A random, positive, non-zero serial.
fn random_serial() -> u64 {
    (rand::random::<u64>() >> 1) | 1
}

/// Validity from a day ago to five years from now.
fn default_validity() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - Duration::days(1), now + Duration::days(VALID_DAYS))
}

/// Options for [`TestCa::client_cert`] (and [`TestCa::server_cert_with`]).
#[derive(Debug, Clone, Default)]
pub struct ClientCertOptions {
    /// Start of validity; default a day ago.
    pub not_before: Option<SystemTime>,
    /// End of validity; default five years from now.
    pub not_after: Option<SystemTime>,
    /// Use an RSA 2048 key instead of ECDSA P-256. All RSA test certificates share one fixed,
    /// published key (rcgen with ring cannot generate RSA keys); the certificates still differ
    /// (random serials).
    pub rsa: bool,
    /// Serial number; default random. Use it to revoke the certificate with
    /// [`TestCa::crl_pem`].
    pub serial: Option<u64>,
}

/// Options for [`TestCa::crl_pem_with`].
#[derive(Debug, Clone, Default)]
pub struct CrlOptions {
    /// thisUpdate; default a minute ago.
    pub this_update: Option<SystemTime>,
    /// nextUpdate; default 30 days from now.
    pub next_update: Option<SystemTime>,
}

/// A throwaway certificate authority for tests and the benchmark.
pub struct TestCa {
    /// Signs certificates and CRLs; holds the CA's name, key usages and key.
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    /// The certificates between this CA and its root (this CA's own first), appended to
    /// every leaf it issues so that clients send the whole chain; empty for a root.
    chain_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("TestCa")
            .field("cert_pem", &self.cert_pem)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl TestCa {
    /// A fresh CA (ECDSA P-256) with the given common name, valid from a day ago for five years.
    ///
    /// # Errors
    /// [`TlsError::Generate`] if rcgen fails.
    pub fn new(common_name: &str) -> Result<TestCa, TlsError> {
        let what = || format!("CA certificate {common_name}");
        let key = KeyPair::generate().map_err(gen_err(what()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, DEV_ORG);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = default_validity();
        params.serial_number = Some(SerialNumber::from(random_serial()));
        let cert = params.self_signed(&key).map_err(gen_err(what()))?;
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            chain_pem: String::new(),
        })
    }

    /// An intermediate CA signed by this CA (serial `serial`, default random). Its leaves
    /// carry the chain up to (not including) the root, so a server trusting only the root
    /// verifies them.
    ///
    /// # Errors
    /// [`TlsError::Generate`] if rcgen fails.
    pub fn intermediate(&self, common_name: &str, serial: Option<u64>) -> Result<TestCa, TlsError> {
        let what = || format!("intermediate CA certificate {common_name}");
        let key = KeyPair::generate().map_err(gen_err(what()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, DEV_ORG);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = default_validity();
        params.serial_number = Some(SerialNumber::from(serial.unwrap_or_else(random_serial)));
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(gen_err(what()))?;
        let cert_pem = cert.pem();
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            chain_pem: format!("{cert_pem}{}", self.chain_pem),
            cert_pem,
        })
    }

    /// The CA certificate (PEM): the client CA bundle for a server trusting this CA, or the
    /// root a client trusts for this CA's server certificates.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA's private key (PKCS#8 PEM).
    fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A server certificate for `localhost`, `127.0.0.1` and `::1`, valid from a day ago for
    /// five years: (cert pem, key pem).
    ///
    /// # Errors
    /// [`TlsError::Generate`] if rcgen fails.
    pub fn server_cert(&self) -> Result<(String, String), TlsError> {
        self.server_cert_with(&ClientCertOptions::default())
    }

    /// Like [`server_cert`](Self::server_cert) with explicit validity, serial or RSA key
    /// (for expired / not-yet-valid server certificate tests).
    ///
    /// # Errors
    /// [`TlsError::Generate`] if rcgen fails.
    pub fn server_cert_with(&self, opts: &ClientCertOptions) -> Result<(String, String), TlsError> {
        self.leaf(
            "Schakel DEV server",
            &["localhost", "127.0.0.1", "::1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            opts,
        )
    }

    /// A client certificate (EKU clientAuth, CN = `common_name`, O = "Schakel dev"):
    /// (cert pem, key pem).
    ///
    /// # Errors
    /// [`TlsError::Generate`] if rcgen fails.
    pub fn client_cert(
        &self,
        common_name: &str,
        opts: &ClientCertOptions,
    ) -> Result<(String, String), TlsError> {
        self.leaf(common_name, &[], ExtendedKeyUsagePurpose::ClientAuth, opts)
    }

    fn leaf(
        &self,
        common_name: &str,
        sans: &[&str],
        eku: ExtendedKeyUsagePurpose,
        opts: &ClientCertOptions,
    ) -> Result<(String, String), TlsError> {
        let what = || format!("certificate {common_name}");
        let key = if opts.rsa {
            KeyPair::from_pem(TEST_RSA_2048_KEY_PEM).map_err(gen_err(what()))?
        } else {
            KeyPair::generate().map_err(gen_err(what()))?
        };
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans).map_err(gen_err(what()))?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, DEV_ORG);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = if opts.rsa {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        let (not_before, not_after) = default_validity();
        params.not_before = opts.not_before.map_or(not_before, OffsetDateTime::from);
        params.not_after = opts.not_after.map_or(not_after, OffsetDateTime::from);
        params.serial_number = Some(SerialNumber::from(
            opts.serial.unwrap_or_else(random_serial),
        ));
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(gen_err(what()))?;
        Ok((
            format!("{}{}", cert.pem(), self.chain_pem),
            key.serialize_pem(),
        ))
    }

    /// A CRL issued by this CA revoking the given serials (PEM), valid from a minute ago for
    /// 30 days.
    ///
    /// # Errors
    /// [`TlsError::Generate`] if rcgen fails.
    pub fn crl_pem(&self, revoked_serials: &[u64]) -> Result<String, TlsError> {
        self.crl_pem_with(revoked_serials, &CrlOptions::default())
    }

    /// [`crl_pem`](Self::crl_pem) with explicit thisUpdate / nextUpdate (e.g. an expired CRL).
    ///
    /// # Errors
    /// [`TlsError::Generate`] if rcgen fails.
    pub fn crl_pem_with(
        &self,
        revoked_serials: &[u64],
        opts: &CrlOptions,
    ) -> Result<String, TlsError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: opts
                .this_update
                .map_or(now - Duration::minutes(1), OffsetDateTime::from),
            next_update: opts
                .next_update
                .map_or(now + Duration::days(30), OffsetDateTime::from),
            crl_number: SerialNumber::from(random_serial()),
            issuing_distribution_point: None,
            revoked_certs: revoked_serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .and_then(|crl| crl.pem())
            .map_err(gen_err("CRL"))
    }
}

/// Writes one file; private keys (`secret`) are readable by the owner only on Unix.
pub(crate) fn write_file(
    dir: &Path,
    name: &str,
    contents: &str,
    secret: bool,
) -> Result<(), TlsError> {
    use std::io::Write;
    let path = dir.join(name);
    let io_err = |source| TlsError::Io {
        action: "writing dev PKI file",
        path: path.clone(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(&path).map_err(io_err)?;
    file.write_all(contents.as_bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

/// Writes a fresh dev PKI into `dir`: ca.pem/ca.key (a CA, CN "Schakel DEV CA - NOT FOR PRODUCTION"),
/// server.pem/server.key (SANs localhost, 127.0.0.1, ::1; EKU serverAuth), and one client cert per DEV_CLIENTS
/// entry (EKU clientAuth, CN = the name, O = "Schakel dev"), all signed by the CA, valid 5 years from now (back-dated 1 day).
/// All keys are ECDSA P-256, PKCS#8. Existing files are overwritten; `dir` is created if missing.
///
/// # Errors
/// [`TlsError::Io`] naming the directory or file that could not be created or written;
/// [`TlsError::Generate`] if rcgen fails.
pub fn write_dev_pki(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        action: "creating dev PKI directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let ca = TestCa::new(DEV_CA_CN)?;
    write_file(dir, "ca.pem", &ca.cert_pem(), false)?;
    write_file(dir, "ca.key", &ca.key_pem(), true)?;
    let (cert, key) = ca.server_cert()?;
    write_file(dir, "server.pem", &cert, false)?;
    write_file(dir, "server.key", &key, true)?;
    for name in DEV_CLIENTS {
        let (cert, key) = ca.client_cert(name, &ClientCertOptions::default())?;
        write_file(dir, &format!("{name}.pem"), &cert, false)?;
        write_file(dir, &format!("{name}.key"), &key, true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{describe, load_certs, load_key};

    #[test]
    fn dev_pki_has_every_role_signed_by_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        write_dev_pki(dir.path()).unwrap();
        let ca = describe(&load_certs(&dir.path().join("ca.pem")).unwrap()[0]).unwrap();
        assert!(ca.subject.contains(DEV_CA_CN), "{}", ca.subject);
        load_key(&dir.path().join("ca.key")).unwrap();
        for name in DEV_CLIENTS.iter().copied().chain(["server"]) {
            let certs = load_certs(&dir.path().join(format!("{name}.pem"))).unwrap();
            let info = describe(&certs[0]).unwrap();
            assert_eq!(info.issuer, ca.subject, "{name}");
            assert_eq!(info.key_type, "ECDSA P-256", "{name}");
            let years = info
                .not_after
                .duration_since(SystemTime::now())
                .unwrap()
                .as_secs()
                / (365 * 86_400);
            assert_eq!(years, 5, "{name}");
            assert!(matches!(
                load_key(&dir.path().join(format!("{name}.key"))).unwrap(),
                rustls_pki_types::PrivateKeyDer::Pkcs8(_)
            ));
        }
        let supplier = describe(&load_certs(&dir.path().join("supplier-a.pem")).unwrap()[0]);
        assert!(supplier.unwrap().subject.contains("CN=supplier-a"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(dir.path().join("server.key")).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn test_ca_debug_hides_the_key() {
        let ca = TestCa::new("debug CA").unwrap();
        let debug = format!("{ca:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains("PRIVATE KEY"));
    }
}
