//! Identity enters here and nowhere else: the interceptor turns the verified
//! client certificate of the connection (its SHA-256 fingerprint, put in the
//! request by the TLS acceptor) into a registered [`Identity`], checks that it is
//! active and has the role the service needs, and puts a [`Caller`] into the
//! request's extensions. Roles come from the certificate, never from a field.
//!
//! The lookup happens per request, not per connection, so a certificate that is
//! revoked or retired, or a supplier that is suspended, is refused on its very
//! next call, also on an HTTP/2 connection opened before.
//!
//! Every refusal is audited (action `access_refused`: the certificate's
//! fingerprint, the identity's name when it is registered, the service and the
//! code), so the trail shows the calls that were turned away as well as those
//! that were served.

use std::time::SystemTime;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::error::ServiceError;
use crate::store::{AuditEvent, Identity, Role, Store};
use crate::tls::PeerInfo;

/// Who is calling: put in every authorised request's extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The registered identity of the client certificate.
    pub identity: Identity,
    /// The connection's peer as seen at the handshake.
    pub peer: PeerInfo,
}

impl Caller {
    /// The authorised caller of a request that passed [`Authorize`].
    ///
    /// # Errors
    /// The request did not pass the interceptor (a wiring bug): INTERNAL.
    pub fn of<T>(request: &Request<T>) -> Result<Caller, ServiceError> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ServiceError::Internal("request reached a service unauthorised".into()))
    }

    /// The supplier id of a supplier caller.
    pub fn supplier_id(&self) -> Result<&str, ServiceError> {
        self.identity
            .supplier_id
            .as_deref()
            .ok_or_else(|| ServiceError::Internal("supplier identity without supplier id".into()))
    }
}

/// The interceptor: one per service, with the role that service needs.
#[derive(Clone)]
pub struct Authorize {
    store: Store,
    role: Role,
    /// The guarded service's name, for the audit trail ("Intake", ...).
    service: &'static str,
}

impl Authorize {
    /// Admits only active identities of `role` to `service`.
    pub fn new(store: Store, role: Role, service: &'static str) -> Self {
        Authorize {
            store,
            role,
            service,
        }
    }

    /// Writes the audit event of a refused call: ids and the code, no content.
    fn audit_refusal(&self, peer: &PeerInfo, error: &ServiceError) {
        let identity = self.store.identity(&peer.fingerprint).ok().flatten();
        let event = AuditEvent {
            at: SystemTime::now(),
            actor_fingerprint: peer.fingerprint.clone(),
            actor: identity
                .as_ref()
                .map_or_else(|| "(not registered)".to_owned(), |i| i.name.clone()),
            role: identity.as_ref().map(|i| i.role),
            action: "access_refused".into(),
            detail: format!(
                "service={} needs_role={} peer={}",
                self.service,
                self.role.as_str(),
                peer.remote_addr
            ),
            outcome: error.code().into(),
        };
        if let Err(e) = self.store.audit(event) {
            tracing::error!(error = %e, "writing audit event");
        }
    }

    /// Looks up and checks the caller of a request.
    ///
    /// # Errors
    /// UNAUTHENTICATED for a missing, unregistered or inactive certificate,
    /// PERMISSION_DENIED for a wrong role or a suspended supplier.
    pub fn check<T>(&self, request: &Request<T>) -> Result<Caller, ServiceError> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or(ServiceError::NoPeerCertificate)?;
        let identity = self.store.identity(&peer.fingerprint)?.ok_or_else(|| {
            ServiceError::UnknownCertificate {
                fingerprint: peer.fingerprint.clone(),
            }
        })?;
        let now = SystemTime::now();
        if !identity.is_active(now) {
            let state = if identity.revoked_at.is_some_and(|t| t <= now) {
                "revoked"
            } else if identity.retire_at.is_some_and(|t| t <= now) {
                "retired"
            } else {
                "expired"
            };
            return Err(ServiceError::InactiveCertificate {
                fingerprint: peer.fingerprint,
                state,
            });
        }
        if identity.role != self.role {
            return Err(ServiceError::WrongRole {
                needed: self.role,
                actual: identity.role,
            });
        }
        if identity.role == Role::Supplier {
            let id = identity.supplier_id.clone().unwrap_or_default();
            match self.store.supplier(&id)? {
                None => return Err(ServiceError::UnknownSupplier(id)),
                Some(s) if s.suspended => return Err(ServiceError::SupplierSuspended(id)),
                Some(_) => {}
            }
        }
        Ok(Caller { identity, peer })
    }
}

impl Interceptor for Authorize {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.check(&request).map_err(|e| {
            if let Some(peer) = request.extensions().get::<PeerInfo>() {
                tracing::info!(peer = %peer.remote_addr, fingerprint = %peer.fingerprint, service = self.service, code = e.code(), "call refused");
                self.audit_refusal(peer, &e);
            }
            Status::from(e)
        })?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}
