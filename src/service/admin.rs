//! The Admin service (role admin): suppliers, client certificates (add with
//! chain check, rotation overlap, revocation, expiry report), the audit log and
//! TLS reload.
//!
//! Every call is written to the audit log with the calling admin certificate
//! (fingerprint, name and subject), the action, ids only as detail, and the
//! outcome, refusals included. Changes to identities are serialised by one lock,
//! so the "last working admin certificate" check cannot race another change.
//!
//! Must not: decide identity itself (the `Authorize` interceptor does), log or
//! audit patient data. Called by tonic, wired in `server::run`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tonic::{Request, Response, Status};

use crate::error::ServiceError;
use crate::proto::admin_server::Admin;
use crate::proto::{
    AddCertificateRequest, AddSupplierRequest, AuditEntry, CertificateInfo, CertificateRef,
    ExpiringCertificatesRequest, ListCertificatesRequest, ListCertificatesResponse,
    ListSuppliersRequest, ListSuppliersResponse, QueryAuditRequest, QueryAuditResponse,
    ReloadTlsRequest, ReloadTlsResponse, RetireCertificateRequest, SupplierInfo, SupplierRef,
};
use crate::reload::Reloader;
use crate::service::auth::Caller;
use crate::service::timestamp;
use crate::store::{AuditEvent, AuditQuery, Identity, IdentityPolicy, Role, Store, Supplier};
use crate::tls::verify::{verify_client_cert, CertCheckError};

/// Largest PEM accepted by AddCertificate.
const MAX_PEM_BYTES: usize = 64 * 1024;
/// Longest supplier id.
const MAX_ID_LEN: usize = 64;

/// The Admin service.
#[derive(Clone)]
pub struct AdminService {
    store: Store,
    reloader: Reloader,
    /// Serialises changes to identities and suppliers, so a check such as
    /// "another admin certificate stays working" holds when the change lands.
    changes: Arc<tokio::sync::Mutex<()>>,
}

impl AdminService {
    /// An admin service over `store`, reloading TLS through `reloader`.
    pub fn new(store: Store, reloader: Reloader) -> Self {
        AdminService {
            store,
            reloader,
            changes: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Runs `work`, audits its outcome as `action` with `detail` (ids only), and
    /// turns its error into a status.
    async fn audited<T>(
        &self,
        caller: &Caller,
        action: &str,
        detail: String,
        work: impl Future<Output = Result<T, ServiceError>>,
    ) -> Result<Response<T>, Status> {
        let result = work.await;
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(e @ (ServiceError::Store(_) | ServiceError::Internal(_))) => {
                format!("failed: {}", e.code())
            }
            Err(e) => format!("refused: {}", e.code()),
        };
        let event = AuditEvent {
            at: SystemTime::now(),
            actor_fingerprint: caller.identity.fingerprint.clone(),
            actor: format!("{} ({})", caller.identity.name, caller.identity.subject),
            role: Some(caller.identity.role),
            action: format!("admin.{action}"),
            detail,
            outcome,
        };
        if let Err(e) = self.store.audit(event) {
            // The action happened (or was refused); failing to record it is
            // reported, and the caller learns it through the error.
            tracing::error!(error = %e, action, "writing the audit event failed");
            return Err(ServiceError::from(e).into());
        }
        result.map(Response::new).map_err(Status::from)
    }

    /// Runs blocking store work off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| ServiceError::Internal(format!("admin task failed: {e}")))?
    }

    async fn set_suspended(
        &self,
        id: String,
        suspended: bool,
    ) -> Result<SupplierInfo, ServiceError> {
        let _guard = self.changes.lock().await;
        self.blocking(move |store| {
            let mut supplier = store
                .supplier(&id)?
                .ok_or_else(|| supplier_not_found(&id))?;
            if supplier.suspended != suspended {
                supplier.suspended = suspended;
                store.put_supplier(&supplier)?;
            }
            Ok(supplier_info(&supplier))
        })
        .await
    }

    /// Changes one identity under the change lock; refuses to stop the last
    /// working admin certificate.
    async fn stop_identity(
        &self,
        fingerprint: String,
        change: Stop,
    ) -> Result<CertificateInfo, ServiceError> {
        let _guard = self.changes.lock().await;
        self.blocking(move |store| {
            let now = SystemTime::now();
            let mut identity = store
                .identity(&fingerprint)?
                .ok_or_else(|| ServiceError::NotFound {
                    code: "CERTIFICATE_NOT_FOUND",
                    message: format!("certificate {fingerprint} is not registered"),
                })?;
            if identity.revoked_at.is_some() {
                return match change {
                    // Revoking twice is harmless.
                    Stop::Revoke => Ok(certificate_info(&identity, now)),
                    Stop::Retire(_) => Err(ServiceError::FailedPrecondition {
                        code: "CERTIFICATE_ALREADY_REVOKED",
                        message: format!("certificate {fingerprint} is revoked already"),
                    }),
                };
            }
            if let (Stop::Retire(_), Some(t)) = (change, identity.retire_at) {
                if t <= now {
                    return Err(ServiceError::FailedPrecondition {
                        code: "CERTIFICATE_ALREADY_RETIRED",
                        message: format!("certificate {fingerprint} is retired already"),
                    });
                }
            }
            if identity.role == Role::Admin && identity.is_active(now) {
                let others = store
                    .identities()?
                    .into_iter()
                    .filter(|i| {
                        i.role == Role::Admin
                            && i.fingerprint != identity.fingerprint
                            && i.is_active(now)
                            && i.retire_at.is_none()
                    })
                    .count();
                if others == 0 {
                    return Err(ServiceError::FailedPrecondition {
                        code: "LAST_ADMIN",
                        message: format!(
                            "certificate {fingerprint} is the last working admin certificate; add another admin certificate first"
                        ),
                    });
                }
            }
            match change {
                Stop::Revoke => identity.revoked_at = Some(now),
                Stop::Retire(at) => identity.retire_at = Some(at),
            }
            store.put_identity(&identity)?;
            Ok(certificate_info(&identity, now))
        })
        .await
    }
}

/// How an identity is stopped.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Revoke,
    Retire(SystemTime),
}

fn supplier_not_found(id: &str) -> ServiceError {
    ServiceError::NotFound {
        code: "SUPPLIER_NOT_FOUND",
        message: format!("supplier {id} is not registered"),
    }
}

fn supplier_info(s: &Supplier) -> SupplierInfo {
    SupplierInfo {
        id: s.id.clone(),
        name: s.name.clone(),
        contact: s.contact.clone(),
        suspended: s.suspended,
        created_at: timestamp(s.created_at),
        ura: s.ura.clone().unwrap_or_default(),
        identity_policy: s.identity_policy.as_str().to_owned(),
    }
}

/// Most bytes of audit entries in one QueryAudit answer: under the 4 MiB that
/// gRPC clients accept by default (a batch's event lists all its message ids).
const MAX_AUDIT_ANSWER_BYTES: usize = 3 * 1024 * 1024;

/// The newest of `entries` (chronological) whose encoded size fits in `max`,
/// still chronological, and whether any were cut. At least the newest one is
/// kept, so paging always moves.
fn newest_within(mut entries: Vec<AuditEntry>, max: usize) -> (Vec<AuditEntry>, bool) {
    use prost::Message;
    let mut total = 0usize;
    let mut keep = 0usize;
    for e in entries.iter().rev() {
        // Field tag and length prefix of each repeated entry: a few bytes more.
        total += e.encoded_len() + 8;
        if total > max && keep > 0 {
            break;
        }
        keep += 1;
    }
    let cut = keep < entries.len();
    let newest = entries.split_off(entries.len() - keep);
    (newest, cut)
}

/// "active", "retiring", "retired", "revoked" or "expired" at `now`.
pub fn certificate_status(identity: &Identity, now: SystemTime) -> &'static str {
    if identity.revoked_at.is_some() {
        "revoked"
    } else if identity.retire_at.is_some_and(|t| t <= now) {
        "retired"
    } else if now > identity.not_after {
        "expired"
    } else if identity.retire_at.is_some() {
        "retiring"
    } else {
        "active"
    }
}

fn certificate_info(i: &Identity, now: SystemTime) -> CertificateInfo {
    CertificateInfo {
        fingerprint: i.fingerprint.clone(),
        role: i.role.as_str().to_owned(),
        name: i.name.clone(),
        supplier_id: i.supplier_id.clone().unwrap_or_default(),
        subject: i.subject.clone(),
        serial: i.serial.clone(),
        not_after: timestamp(i.not_after),
        added_at: timestamp(i.added_at),
        retire_at: i.retire_at.map(timestamp).unwrap_or_default(),
        revoked_at: i.revoked_at.map(timestamp).unwrap_or_default(),
        status: certificate_status(i, now).to_owned(),
        origin: i.origin.as_str().to_owned(),
    }
}

/// The URA and identity policy of a new supplier: a URA must be 8 digits
/// (`URA_FORMAT`); the policy is `pinned` or `ura` (`INVALID_REQUEST`), by
/// default `ura` when a URA is given, and `ura` needs a URA (`URA_MISSING`).
fn supplier_policy(
    ura: &str,
    policy: &str,
) -> Result<(Option<String>, IdentityPolicy), ServiceError> {
    let ura = if ura.is_empty() {
        None
    } else {
        let parsed = crate::uzi::Ura::parse(ura).map_err(|_| ServiceError::Rejected {
            code: "URA_FORMAT",
            message: "ura: a URA is exactly 8 digits".into(),
        })?;
        Some(parsed.as_str().to_owned())
    };
    let policy = match (policy, &ura) {
        ("", Some(_)) | ("ura", Some(_)) => IdentityPolicy::Ura,
        ("", None) | ("pinned", _) => IdentityPolicy::Pinned,
        ("ura", None) => {
            return Err(ServiceError::Rejected {
                code: "URA_MISSING",
                message: "identity_policy: ura needs the supplier's URA".into(),
            })
        }
        _ => {
            return Err(ServiceError::InvalidRequest {
                field: "identity_policy",
                message: "must be \"pinned\" or \"ura\"".into(),
            })
        }
    };
    Ok((ura, policy))
}

/// An optional RFC 3339 time field.
fn parse_time(field: &'static str, value: &str) -> Result<Option<SystemTime>, ServiceError> {
    if value.is_empty() {
        return Ok(None);
    }
    humantime::parse_rfc3339_weak(value)
        .map(Some)
        .map_err(|e| ServiceError::InvalidRequest {
            field,
            message: format!("not an RFC 3339 time: {e}"),
        })
}

fn validate_supplier_id(id: &str) -> Result<(), ServiceError> {
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(ServiceError::InvalidRequest {
            field: "id",
            message: format!(
                "supplier id must be 1..={MAX_ID_LEN} characters of a-z, A-Z, 0-9, '-', '_', '.'"
            ),
        });
    }
    Ok(())
}

fn parse_role(role: &str) -> Result<Role, ServiceError> {
    match role {
        "supplier" => Ok(Role::Supplier),
        "registry" => Ok(Role::Registry),
        "admin" => Ok(Role::Admin),
        _ => Err(ServiceError::InvalidRequest {
            field: "role",
            message: "must be \"supplier\", \"registry\" or \"admin\"".into(),
        }),
    }
}

fn cert_check_error(e: CertCheckError) -> ServiceError {
    let message = e.to_string();
    match e {
        CertCheckError::Parse(_) => ServiceError::Rejected {
            code: "CERTIFICATE_UNPARSABLE",
            message,
        },
        CertCheckError::NotValid(_) => ServiceError::Rejected {
            code: "CERTIFICATE_NOT_VALID",
            message,
        },
        CertCheckError::Untrusted(_) => ServiceError::Rejected {
            code: "CERTIFICATE_UNTRUSTED",
            message,
        },
        CertCheckError::Ca(_) => ServiceError::FailedPrecondition {
            code: "CLIENT_CA_UNUSABLE",
            message,
        },
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn add_supplier(
        &self,
        request: Request<AddSupplierRequest>,
    ) -> Result<Response<SupplierInfo>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let detail = if req.ura.is_empty() {
            format!("supplier={}", req.id)
        } else {
            format!("supplier={} ura={}", req.id, req.ura)
        };
        self.audited(&caller, "add_supplier", detail, async {
            validate_supplier_id(&req.id)?;
            let (ura, identity_policy) = supplier_policy(&req.ura, &req.identity_policy)?;
            if req.name.trim().is_empty() {
                return Err(ServiceError::InvalidRequest {
                    field: "name",
                    message: "must not be empty".into(),
                });
            }
            let _guard = self.changes.lock().await;
            self.blocking(move |store| {
                if store.supplier(&req.id)?.is_some() {
                    return Err(ServiceError::AlreadyExists {
                        code: "SUPPLIER_EXISTS",
                        message: format!("supplier {} is registered already", req.id),
                    });
                }
                if let Some(ura) = &ura {
                    if let Some(other) = store
                        .suppliers()?
                        .into_iter()
                        .find(|s| s.ura.as_deref() == Some(ura.as_str()))
                    {
                        return Err(ServiceError::AlreadyExists {
                            code: "URA_EXISTS",
                            message: format!(
                                "URA {ura} is registered already for supplier {}",
                                other.id
                            ),
                        });
                    }
                }
                let supplier = Supplier {
                    id: req.id,
                    name: req.name,
                    contact: req.contact,
                    suspended: false,
                    created_at: SystemTime::now(),
                    ura,
                    identity_policy,
                };
                store.put_supplier(&supplier)?;
                Ok(supplier_info(&supplier))
            })
            .await
        })
        .await
    }

    async fn list_suppliers(
        &self,
        request: Request<ListSuppliersRequest>,
    ) -> Result<Response<ListSuppliersResponse>, Status> {
        let caller = Caller::of(&request)?;
        self.audited(&caller, "list_suppliers", String::new(), async {
            let suppliers = self.store.suppliers()?;
            Ok(ListSuppliersResponse {
                suppliers: suppliers.iter().map(supplier_info).collect(),
            })
        })
        .await
    }

    async fn get_supplier(
        &self,
        request: Request<SupplierRef>,
    ) -> Result<Response<SupplierInfo>, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().id;
        self.audited(&caller, "get_supplier", format!("supplier={id}"), async {
            let s = self
                .store
                .supplier(&id)?
                .ok_or_else(|| supplier_not_found(&id))?;
            Ok(supplier_info(&s))
        })
        .await
    }

    async fn suspend_supplier(
        &self,
        request: Request<SupplierRef>,
    ) -> Result<Response<SupplierInfo>, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().id;
        let detail = format!("supplier={id}");
        self.audited(
            &caller,
            "suspend_supplier",
            detail,
            self.set_suspended(id, true),
        )
        .await
    }

    async fn resume_supplier(
        &self,
        request: Request<SupplierRef>,
    ) -> Result<Response<SupplierInfo>, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().id;
        let detail = format!("supplier={id}");
        self.audited(
            &caller,
            "resume_supplier",
            detail,
            self.set_suspended(id, false),
        )
        .await
    }

    async fn add_certificate(
        &self,
        request: Request<AddCertificateRequest>,
    ) -> Result<Response<CertificateInfo>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let mut detail = format!("role={}", req.role);
        if !req.supplier_id.is_empty() {
            detail.push_str(&format!(" supplier={}", req.supplier_id));
        }
        let client_ca = self.reloader.files().client_ca.clone();
        let work = async {
            if req.pem.len() > MAX_PEM_BYTES {
                return Err(ServiceError::InvalidRequest {
                    field: "pem",
                    message: format!("larger than {MAX_PEM_BYTES} bytes"),
                });
            }
            let role = parse_role(&req.role)?;
            let supplier_id = match (role, req.supplier_id.is_empty()) {
                (Role::Supplier, true) => {
                    return Err(ServiceError::InvalidRequest {
                        field: "supplier_id",
                        message: "required for role supplier".into(),
                    })
                }
                (Role::Supplier, false) => Some(req.supplier_id.clone()),
                (_, true) => None,
                (_, false) => {
                    return Err(ServiceError::InvalidRequest {
                        field: "supplier_id",
                        message: "only for role supplier".into(),
                    })
                }
            };
            let _guard = self.changes.lock().await;
            self.blocking(move |store| {
                let now = SystemTime::now();
                let info =
                    verify_client_cert(&req.pem, &client_ca, now).map_err(cert_check_error)?;
                if let Some(id) = &supplier_id {
                    store.supplier(id)?.ok_or_else(|| supplier_not_found(id))?;
                }
                if store.identity(&info.fingerprint)?.is_some() {
                    return Err(ServiceError::AlreadyExists {
                        code: "CERTIFICATE_EXISTS",
                        message: format!("certificate {} is registered already", info.fingerprint),
                    });
                }
                let name = if req.name.trim().is_empty() {
                    info.subject.clone()
                } else {
                    req.name
                };
                let identity = crate::server::new_identity(info, role, name, supplier_id, now);
                store.put_identity(&identity)?;
                Ok(certificate_info(&identity, now))
            })
            .await
        };
        // The fingerprint is only known inside; audit it through the result.
        let result = work.await;
        let detail = match &result {
            Ok(info) => format!("{detail} fingerprint={}", info.fingerprint),
            Err(_) => detail,
        };
        self.audited(&caller, "add_certificate", detail, async { result })
            .await
    }

    async fn list_certificates(
        &self,
        request: Request<ListCertificatesRequest>,
    ) -> Result<Response<ListCertificatesResponse>, Status> {
        let caller = Caller::of(&request)?;
        let supplier = request.into_inner().supplier_id;
        let detail = if supplier.is_empty() {
            String::new()
        } else {
            format!("supplier={supplier}")
        };
        self.audited(&caller, "list_certificates", detail, async {
            let now = SystemTime::now();
            let certificates = self
                .store
                .identities()?
                .iter()
                .filter(|i| supplier.is_empty() || i.supplier_id.as_deref() == Some(&supplier))
                .map(|i| certificate_info(i, now))
                .collect();
            Ok(ListCertificatesResponse { certificates })
        })
        .await
    }

    async fn retire_certificate(
        &self,
        request: Request<RetireCertificateRequest>,
    ) -> Result<Response<CertificateInfo>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let detail = format!("fingerprint={} at={}", req.fingerprint, req.at);
        self.audited(&caller, "retire_certificate", detail, async {
            let at = parse_time("at", &req.at)?.unwrap_or_else(SystemTime::now);
            self.stop_identity(req.fingerprint, Stop::Retire(at)).await
        })
        .await
    }

    async fn revoke_certificate(
        &self,
        request: Request<CertificateRef>,
    ) -> Result<Response<CertificateInfo>, Status> {
        let caller = Caller::of(&request)?;
        let fingerprint = request.into_inner().fingerprint;
        let detail = format!("fingerprint={fingerprint}");
        self.audited(
            &caller,
            "revoke_certificate",
            detail,
            self.stop_identity(fingerprint, Stop::Revoke),
        )
        .await
    }

    async fn expiring_certificates(
        &self,
        request: Request<ExpiringCertificatesRequest>,
    ) -> Result<Response<ListCertificatesResponse>, Status> {
        let caller = Caller::of(&request)?;
        let within = Duration::from_secs(request.into_inner().within_secs);
        let detail = format!("within_secs={}", within.as_secs());
        self.audited(&caller, "expiring_certificates", detail, async {
            let now = SystemTime::now();
            let horizon = now.checked_add(within).unwrap_or(now);
            let mut certificates: Vec<_> = self
                .store
                .identities()?
                .into_iter()
                .filter(|i| i.is_active(now) && i.not_after <= horizon)
                .collect();
            certificates.sort_by_key(|i| i.not_after);
            Ok(ListCertificatesResponse {
                certificates: certificates
                    .iter()
                    .map(|i| certificate_info(i, now))
                    .collect(),
            })
        })
        .await
    }

    async fn query_audit(
        &self,
        request: Request<QueryAuditRequest>,
    ) -> Result<Response<QueryAuditResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let detail = format!(
            "from={} to={} actor={} limit={}",
            req.from, req.to, req.actor_fingerprint, req.limit
        );
        // Query first, audit after: the answer shows the log as it was.
        let result = async {
            let query = AuditQuery {
                from: parse_time("from", &req.from)?,
                to: parse_time("to", &req.to)?,
                actor_fingerprint: (!req.actor_fingerprint.is_empty())
                    .then(|| req.actor_fingerprint.clone()),
                limit: match usize::try_from(req.limit).unwrap_or(usize::MAX) {
                    0 => 1_000,
                    n => n.min(10_000),
                },
            };
            let limit = query.limit;
            let events = self
                .blocking(move |store| Ok(store.audit_events(&query)?))
                .await?;
            let at_limit = events.len() >= limit;
            let entries: Vec<AuditEntry> = events
                .into_iter()
                .map(|e| AuditEntry {
                    at: timestamp(e.at),
                    actor_fingerprint: e.actor_fingerprint,
                    actor: e.actor,
                    role: e.role.map(Role::as_str).unwrap_or_default().to_owned(),
                    action: e.action,
                    detail: e.detail,
                    outcome: e.outcome,
                })
                .collect();
            let (events, cut) = newest_within(entries, MAX_AUDIT_ANSWER_BYTES);
            Ok(QueryAuditResponse {
                events,
                truncated: cut || at_limit,
            })
        }
        .await;
        self.audited(&caller, "query_audit", detail, async { result })
            .await
    }

    async fn reload_tls(
        &self,
        request: Request<ReloadTlsRequest>,
    ) -> Result<Response<ReloadTlsResponse>, Status> {
        let caller = Caller::of(&request)?;
        self.audited(&caller, "reload_tls", String::new(), async {
            let report = self.reloader.reload("admin").await.map_err(|e| {
                ServiceError::FailedPrecondition {
                    code: "TLS_RELOAD_FAILED",
                    message: format!("{e}; the previous TLS material stays in force"),
                }
            })?;
            Ok(ReloadTlsResponse {
                server_subject: report.server.subject,
                server_fingerprint: report.server.fingerprint,
                server_not_after: timestamp(report.server.not_after),
                client_cas: u32::try_from(report.client_cas).unwrap_or(u32::MAX),
                crls: u32::try_from(report.crls).unwrap_or(u32::MAX),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        let now = SystemTime::now();
        Identity {
            fingerprint: "a".repeat(64),
            role: Role::Supplier,
            name: "s".into(),
            supplier_id: Some("s".into()),
            subject: "CN=s".into(),
            serial: "01".into(),
            not_after: now + Duration::from_secs(3600),
            added_at: now,
            retire_at: None,
            revoked_at: None,
            origin: Default::default(),
        }
    }

    #[test]
    fn an_audit_answer_keeps_the_newest_events_that_fit() {
        let entry = |n: usize| AuditEntry {
            at: format!("t{n}"),
            detail: "x".repeat(1000),
            ..AuditEntry::default()
        };
        let all: Vec<AuditEntry> = (0..10).map(entry).collect();
        let one = {
            use prost::Message;
            all[0].encoded_len() + 8
        };
        let (kept, cut) = newest_within(all.clone(), one * 3);
        assert!(cut);
        let at: Vec<&str> = kept.iter().map(|e| e.at.as_str()).collect();
        assert_eq!(at, ["t7", "t8", "t9"]);
        let (kept, cut) = newest_within(all.clone(), one * 10);
        assert_eq!((kept.len(), cut), (10, false));
        // One event larger than the cap still goes out alone.
        let (kept, cut) = newest_within(all, 10);
        assert_eq!((kept.len(), kept[0].at.as_str(), cut), (1, "t9", true));
    }

    #[test]
    fn status_follows_revocation_retirement_and_expiry() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let mut i = identity();
        assert_eq!(certificate_status(&i, now), "active");
        i.retire_at = Some(now + hour);
        assert_eq!(certificate_status(&i, now), "retiring");
        assert_eq!(certificate_status(&i, now + hour), "retired");
        i.revoked_at = Some(now);
        assert_eq!(certificate_status(&i, now), "revoked");
        let i = identity();
        assert_eq!(certificate_status(&i, now + hour * 2), "expired");
    }

    #[test]
    fn supplier_ids_and_roles_are_checked() {
        assert!(validate_supplier_id("his-a_1.x").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert_eq!(
                validate_supplier_id(bad).unwrap_err().code(),
                "INVALID_REQUEST"
            );
        }
        assert_eq!(parse_role("admin").unwrap(), Role::Admin);
        assert_eq!(parse_role("root").unwrap_err().code(), "INVALID_REQUEST");
        assert!(parse_time("at", "").unwrap().is_none());
        assert_eq!(
            parse_time("at", "yesterday").unwrap_err().code(),
            "INVALID_REQUEST"
        );
    }
}
