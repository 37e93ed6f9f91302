//! The `ura` identity policy: a certificate nobody registered is a supplier's
//! when it is a currently valid UZI server certificate (card type S), issued
//! by a configured UZI server CA ([`UziTrust`], `tls.uzi_server_ca`), naming
//! the URA of a supplier whose policy is `ura`. Its first use registers it as
//! that supplier's identity ([`IdentityOrigin::UraFirstUse`]) and writes an
//! audit event with its serial and fingerprint, so it shows in `admin certs
//! list` and can be revoked or retired one by one like a pinned certificate.
//!
//! Must not: make anything but supplier identities (the registry and admins
//! stay pinned), accept a certificate whose issuer's signature it did not check
//! itself, or log a UZI number (a person's card identifies the person): logs and
//! errors carry fingerprints, serials, URAs and card types only.
//!
//! Called by: the interceptor (`service::auth::Authorize::check`) for a
//! fingerprint the store does not know; the server loads the [`UziTrust`].

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::{CardType, Ura, UziCertificate, UziError};
use crate::store::{AuditEvent, Identity, IdentityOrigin, IdentityPolicy, Role, Store, StoreError};
use crate::tls::{self, PeerInfo, TlsError};

/// Why the `ura` policy refuses a certificate of a UZI server CA.
#[derive(Debug, thiserror::Error)]
pub enum UraRefusal {
    /// The certificate carries no usable UZI value.
    #[error("{0}")]
    NotUzi(#[from] UziError),
    /// A person's card (Z, N, M): never a system.
    #[error("a UZI card of type {} is not a server certificate; a system needs card type S", .0.describe())]
    NotServerCard(CardType),
    /// No supplier with policy `ura` has this URA.
    #[error("no supplier with identity policy ura is registered for URA {0}")]
    UraNotRegistered(Ura),
    /// More than one supplier with policy `ura` has this URA (the admin API
    /// refuses that; a hand-edited store or config could still hold it).
    #[error("more than one supplier with identity policy ura has URA {0}")]
    UraAmbiguous(Ura),
    /// The certificate is outside its validity period.
    #[error("the UZI certificate is not valid now")]
    NotValidNow,
}

impl UraRefusal {
    /// The stable code (`docs/error-codes.md`, "UZI certificates").
    pub fn code(&self) -> &'static str {
        match self {
            UraRefusal::NotUzi(e) => e.code(),
            UraRefusal::NotServerCard(_) => "UZI_NOT_SERVER_CARD",
            UraRefusal::UraNotRegistered(_) => "URA_NOT_REGISTERED",
            UraRefusal::UraAmbiguous(_) => "URA_AMBIGUOUS",
            UraRefusal::NotValidNow => "CERTIFICATE_NOT_VALID",
        }
    }
}

/// What the policy found, or why it failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The certificate is refused.
    #[error(transparent)]
    Refused(#[from] UraRefusal),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The UZI server CAs whose certificates count under `ura`.
pub struct UziTrust {
    /// DER of each CA certificate.
    cas: Vec<Vec<u8>>,
    /// Serialises first uses, so two connections of one new certificate
    /// register and audit it once.
    first_use: Mutex<()>,
}

impl std::fmt::Debug for UziTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UziTrust")
            .field("cas", &self.cas.len())
            .finish()
    }
}

impl UziTrust {
    /// The CA certificates in a PEM file (`tls.uzi_server_ca`).
    ///
    /// # Errors
    /// The file cannot be read, holds no certificate, or one does not parse.
    pub fn from_pem_file(path: &Path) -> Result<UziTrust, TlsError> {
        let certs = tls::load_certs(path)?;
        if certs.is_empty() {
            return Err(TlsError::Invalid {
                action: "reading the UZI server CA",
                path: path.to_path_buf(),
                reason: "no certificates found".into(),
            });
        }
        for cert in &certs {
            tls::describe(cert)?;
        }
        Ok(UziTrust::from_der(
            certs.iter().map(|c| c.to_vec()).collect(),
        ))
    }

    /// The CA certificates, DER.
    pub fn from_der(cas: Vec<Vec<u8>>) -> UziTrust {
        UziTrust {
            cas,
            first_use: Mutex::new(()),
        }
    }

    /// Whether one of the CAs issued `cert`: its subject is the certificate's
    /// issuer and its key verifies the certificate's signature.
    pub fn issued(&self, cert: &X509Certificate<'_>) -> bool {
        self.cas.iter().any(|der| {
            X509Certificate::from_der(der).is_ok_and(|(_, ca)| {
                ca.subject().as_raw() == cert.issuer().as_raw()
                    && cert.verify_signature(Some(ca.public_key())).is_ok()
            })
        })
    }

    /// The supplier identity of an unregistered certificate under `ura`.
    ///
    /// `Ok(None)`: not a certificate of a UZI server CA (the caller refuses it
    /// as unregistered). `Ok(Some(identity))`: the identity, registered and
    /// audited now if this is its first use.
    ///
    /// # Errors
    /// [`UraRefusal`] for a UZI certificate the policy does not admit, or the
    /// store failed.
    pub fn resolve(&self, store: &Store, peer: &PeerInfo) -> Result<Option<Identity>, PolicyError> {
        let Ok((_, cert)) = X509Certificate::from_der(&peer.cert_der) else {
            return Ok(None);
        };
        if !self.issued(&cert) {
            return Ok(None);
        }
        let uzi = UziCertificate::from_der(&peer.cert_der).map_err(UraRefusal::from)?;
        if uzi.name.card_type != CardType::Server {
            return Err(UraRefusal::NotServerCard(uzi.name.card_type).into());
        }
        if !cert.validity().is_valid() {
            return Err(UraRefusal::NotValidNow.into());
        }
        let ura = uzi.ura().clone();
        let (by_ura, pinned): (Vec<_>, Vec<_>) = store
            .suppliers()?
            .into_iter()
            .filter(|s| s.ura.as_deref() == Some(ura.as_str()))
            .partition(|s| s.identity_policy == IdentityPolicy::Ura);
        let supplier = match by_ura.len() {
            // The URA of a pinned supplier: this certificate is simply not
            // registered (yet), as without the policy.
            0 if !pinned.is_empty() => return Ok(None),
            0 => return Err(UraRefusal::UraNotRegistered(ura).into()),
            1 => by_ura
                .into_iter()
                .next()
                .ok_or_else(|| UraRefusal::UraAmbiguous(ura.clone()))?,
            _ => return Err(UraRefusal::UraAmbiguous(ura).into()),
        };
        // A panic while holding the lock leaves nothing half-done behind.
        let _first = self
            .first_use
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(identity) = store.identity(&peer.fingerprint)? {
            return Ok(Some(identity)); // registered by a concurrent first use
        }
        let info = tls::describe(&peer.cert_der)
            .map_err(|e| UraRefusal::NotUzi(UziError::Certificate(e.to_string())))?;
        let now = SystemTime::now();
        let identity = Identity {
            fingerprint: info.fingerprint.clone(),
            role: Role::Supplier,
            name: format!("{} (URA {ura}, serial {})", supplier.id, info.serial),
            supplier_id: Some(supplier.id.clone()),
            subject: info.subject,
            serial: info.serial.clone(),
            not_after: info.not_after,
            added_at: now,
            retire_at: None,
            revoked_at: None,
            origin: IdentityOrigin::UraFirstUse,
        };
        store.put_identity(&identity)?;
        store.audit(AuditEvent {
            at: now,
            actor_fingerprint: identity.fingerprint.clone(),
            actor: identity.name.clone(),
            role: Some(Role::Supplier),
            action: "identity.ura_first_use".into(),
            detail: format!(
                "supplier={} ura={ura} serial={} fingerprint={} issuer={}",
                supplier.id, info.serial, identity.fingerprint, info.issuer
            ),
            outcome: "ok".into(),
        })?;
        tracing::info!(
            supplier = %supplier.id,
            %ura,
            serial = %info.serial,
            fingerprint = %identity.fingerprint,
            "UZI server certificate registered on its first use (identity policy ura)"
        );
        Ok(Some(identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{error_code, ServiceError};

    #[test]
    fn every_refusal_has_its_grpc_code_and_is_documented() {
        let ura = Ura::parse("90000001").unwrap();
        let cases = [
            (
                UraRefusal::NotUzi(UziError::Missing),
                tonic::Code::Unauthenticated,
            ),
            (
                UraRefusal::NotUzi(UziError::Malformed("x".into())),
                tonic::Code::Unauthenticated,
            ),
            (
                UraRefusal::NotServerCard(CardType::CareProvider),
                tonic::Code::PermissionDenied,
            ),
            (
                UraRefusal::UraNotRegistered(ura.clone()),
                tonic::Code::Unauthenticated,
            ),
            (UraRefusal::UraAmbiguous(ura), tonic::Code::Unauthenticated),
            (UraRefusal::NotValidNow, tonic::Code::Unauthenticated),
        ];
        let doc = include_str!("../../docs/error-codes.md");
        for (refusal, grpc) in cases {
            let code = refusal.code();
            let status = tonic::Status::from(ServiceError::Uzi(refusal));
            assert_eq!(status.code(), grpc, "{code}");
            assert_eq!(error_code(&status), Some(code));
            assert!(
                doc.contains(&format!("`{code}`")),
                "{code} missing from the docs"
            );
        }
        for code in ["URA_FORMAT", "URA_MISSING", "URA_EXISTS"] {
            assert!(
                doc.contains(&format!("`{code}`")),
                "{code} missing from the docs"
            );
        }
    }
}
