//! Certificate lifecycle and administration over the wire: real gateway, real
//! mTLS, real sled. Rotation with overlap, revocation on a live channel,
//! suspension, refused certificates, the last-admin guard, TLS reload (server
//! certificate, broken material, CRLs) and the audit trail.

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::*;
use schakel::client::ClientFiles;
use schakel::proto::admin_client::AdminClient;
use schakel::proto::intake_client::IntakeClient;
use schakel::proto::*;
use schakel::tls::dev::{ClientCertOptions, TestCa};
use tonic::transport::Channel;
use tonic::Code;

async fn admin(server: &TestServer) -> AdminClient<Channel> {
    AdminClient::new(server.channel(ADMIN).await)
}

/// Writes a new client certificate of the server's CA as `certs/{name}.pem/.key`
/// and returns its PEM.
fn new_client_cert(server: &TestServer, name: &str, opts: &ClientCertOptions) -> String {
    let (cert, key) = server.ca.client_cert(name, opts).unwrap();
    std::fs::write(server.certs().join(format!("{name}.pem")), &cert).unwrap();
    std::fs::write(server.certs().join(format!("{name}.key")), &key).unwrap();
    cert
}

fn fingerprint_of(server: &TestServer, name: &str) -> String {
    let certs = schakel::tls::load_certs(&server.certs().join(format!("{name}.pem"))).unwrap();
    schakel::tls::fingerprint(certs[0].as_ref())
}

fn add_request(pem: &str, role: &str, name: &str, supplier: &str) -> AddCertificateRequest {
    AddCertificateRequest {
        pem: pem.to_owned(),
        role: role.to_owned(),
        name: name.to_owned(),
        supplier_id: supplier.to_owned(),
    }
}

async fn submit(intake: &mut IntakeClient<Channel>, id: &str) -> Result<u32, tonic::Status> {
    intake
        .submit_batch(batch(id, vec![record(id)]))
        .await
        .map(|r| r.into_inner().accepted)
}

fn assert_refused(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, ours: &str) {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(code_of(&status), ours, "{status:?}");
}

/// One call over a fresh connection made with `files`.
async fn fresh_call(
    server: &TestServer,
    files: &ClientFiles,
    id: &str,
) -> Result<u32, tonic::Status> {
    match schakel::client::connect(&server.url(), files).await {
        Err(e) => Err(tonic::Status::unavailable(format!("{e:?}"))),
        Ok(channel) => submit(&mut IntakeClient::new(channel), id).await,
    }
}

/// Polls `check` every 50 ms, at most 200 times (10 s), until it holds.
async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn rotation_with_overlap_then_the_old_certificate_stops_at_its_retire_time() {
    let server = TestServer::start().await;
    let mut admin = admin(&server).await;
    let pem = new_client_cert(&server, "supplier-a-2026", &ClientCertOptions::default());
    let added = admin
        .add_certificate(add_request(&pem, "supplier", "supplier-a 2026", SUPPLIER_A))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        added.fingerprint,
        fingerprint_of(&server, "supplier-a-2026")
    );
    assert!(added.subject.contains("CN=supplier-a-2026"), "{added:?}");
    assert!(!added.serial.is_empty());
    assert!(!added.not_after.is_empty());
    assert_eq!(
        (added.status.as_str(), added.supplier_id.as_str()),
        ("active", SUPPLIER_A)
    );

    let mut old = server.intake(SUPPLIER_A).await;
    let mut new = server.intake("supplier-a-2026").await;
    assert_eq!(submit(&mut old, "old-1").await.unwrap(), 1);
    assert_eq!(submit(&mut new, "new-1").await.unwrap(), 1);

    let old_fp = fingerprint_of(&server, SUPPLIER_A);
    let at = SystemTime::now() + Duration::from_secs(4);
    let retiring = admin
        .retire_certificate(RetireCertificateRequest {
            fingerprint: old_fp.clone(),
            at: humantime::format_rfc3339_millis(at).to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retiring.status, "retiring");
    // The overlap: both still work until the retire time.
    assert_eq!(submit(&mut old, "old-2").await.unwrap(), 1);
    assert_eq!(submit(&mut new, "new-2").await.unwrap(), 1);

    let mut n = 0;
    let stopped = eventually(|| {
        n += 1;
        let id = format!("old-poll-{n}");
        let mut old = old.clone();
        async move { submit(&mut old, &id).await.is_err() }
    })
    .await;
    assert!(
        stopped,
        "the old certificate kept working past its retire time"
    );
    assert!(SystemTime::now() >= at);
    assert_refused(
        submit(&mut old, "old-3").await,
        Code::Unauthenticated,
        "CERTIFICATE_RETIRED",
    );
    assert_eq!(submit(&mut new, "new-3").await.unwrap(), 1);
    // Retired is final: a later retire time does not bring it back.
    assert_refused(
        admin
            .retire_certificate(RetireCertificateRequest {
                fingerprint: old_fp.clone(),
                at: humantime::format_rfc3339(SystemTime::now() + Duration::from_secs(3600))
                    .to_string(),
            })
            .await,
        Code::FailedPrecondition,
        "CERTIFICATE_ALREADY_RETIRED",
    );

    let list = admin
        .list_certificates(ListCertificatesRequest {
            supplier_id: SUPPLIER_A.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut states: Vec<_> = list
        .certificates
        .iter()
        .map(|c| (c.fingerprint.clone(), c.status.clone()))
        .collect();
    states.sort();
    let mut expected = vec![
        (old_fp, "retired".to_owned()),
        (added.fingerprint, "active".to_owned()),
    ];
    expected.sort();
    assert_eq!(states, expected);
}

/// The `access_refused` events of one certificate in the audit trail.
async fn refusals(admin: &mut AdminClient<Channel>, fingerprint: String) -> Vec<AuditEntry> {
    let events = admin
        .query_audit(QueryAuditRequest {
            actor_fingerprint: fingerprint,
            ..QueryAuditRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    events
        .into_iter()
        .filter(|e| e.action == "access_refused")
        .collect()
}

#[tokio::test]
async fn revoking_reaches_a_channel_that_is_already_open() {
    let server = TestServer::start().await;
    let mut admin = admin(&server).await;
    let mut intake = server.intake(SUPPLIER_B).await;
    assert_eq!(submit(&mut intake, "before").await.unwrap(), 1);

    let revoked = admin
        .revoke_certificate(CertificateRef {
            fingerprint: fingerprint_of(&server, SUPPLIER_B),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.status, "revoked");
    assert!(!revoked.revoked_at.is_empty());

    // The same channel (same HTTP/2 connection): refused on the very next call.
    assert_refused(
        submit(&mut intake, "after").await,
        Code::Unauthenticated,
        "CERTIFICATE_REVOKED",
    );
    // Other suppliers are not affected.
    assert_eq!(
        submit(&mut server.intake(SUPPLIER_A).await, "a")
            .await
            .unwrap(),
        1
    );
    // The refusal is in the audit trail: who, which service, which code.
    let refused = refusals(&mut admin, fingerprint_of(&server, SUPPLIER_B)).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].outcome, "CERTIFICATE_REVOKED");
    assert_eq!(refused[0].role, "supplier");
    assert!(refused[0].actor.contains("supplier-b"), "{:?}", refused[0]);
    assert!(
        refused[0]
            .detail
            .starts_with("service=Intake needs_role=supplier peer=127.0.0.1:"),
        "{:?}",
        refused[0]
    );
    // A registered certificate calling a service of another role: audited too.
    let mut as_supplier = AdminClient::new(server.channel(SUPPLIER_A).await);
    assert_refused(
        as_supplier.list_suppliers(ListSuppliersRequest {}).await,
        Code::PermissionDenied,
        "WRONG_ROLE",
    );
    let refused = refusals(&mut admin, fingerprint_of(&server, SUPPLIER_A)).await;
    let seen: Vec<_> = refused
        .iter()
        .map(|e| (e.outcome.as_str(), e.role.as_str()))
        .collect();
    assert_eq!(seen, [("WRONG_ROLE", "supplier")], "{refused:?}");
    // Unknown fingerprint: NOT_FOUND.
    assert_refused(
        admin
            .revoke_certificate(CertificateRef {
                fingerprint: "0".repeat(64),
            })
            .await,
        Code::NotFound,
        "CERTIFICATE_NOT_FOUND",
    );
}

#[tokio::test]
async fn suspend_and_resume_a_supplier() {
    let server = TestServer::start().await;
    let mut admin = admin(&server).await;
    let mut intake = server.intake(SUPPLIER_A).await;
    assert_eq!(submit(&mut intake, "m-1").await.unwrap(), 1);

    let suspended = admin
        .suspend_supplier(SupplierRef {
            id: SUPPLIER_A.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(suspended.suspended);
    assert_refused(
        submit(&mut intake, "m-2").await,
        Code::PermissionDenied,
        "SUPPLIER_SUSPENDED",
    );
    let shown = admin
        .get_supplier(SupplierRef {
            id: SUPPLIER_A.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(shown.suspended);

    let resumed = admin
        .resume_supplier(SupplierRef {
            id: SUPPLIER_A.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!resumed.suspended);
    assert_eq!(submit(&mut intake, "m-3").await.unwrap(), 1);

    assert_refused(
        admin
            .suspend_supplier(SupplierRef {
                id: "nobody".into(),
            })
            .await,
        Code::NotFound,
        "SUPPLIER_NOT_FOUND",
    );
}

#[tokio::test]
async fn add_and_list_suppliers() {
    let server = TestServer::start().await;
    let mut admin = admin(&server).await;
    let request = AddSupplierRequest {
        id: "supplier-c".into(),
        name: "Supplier C".into(),
        contact: "desk@supplier-c.example".into(),
        ..AddSupplierRequest::default()
    };
    let added = admin
        .add_supplier(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((added.id.as_str(), added.suspended), ("supplier-c", false));
    assert_refused(
        admin.add_supplier(request).await,
        Code::AlreadyExists,
        "SUPPLIER_EXISTS",
    );
    assert_refused(
        admin
            .add_supplier(AddSupplierRequest {
                id: "bad id/x".into(),
                name: "x".into(),
                contact: String::new(),
                ..AddSupplierRequest::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    let ids: Vec<_> = admin
        .list_suppliers(ListSuppliersRequest {})
        .await
        .unwrap()
        .into_inner()
        .suppliers
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, [SUPPLIER_A, SUPPLIER_B, "supplier-c"]);

    // A certificate for the new supplier works at once.
    let pem = new_client_cert(&server, "supplier-c", &ClientCertOptions::default());
    admin
        .add_certificate(add_request(&pem, "supplier", "", "supplier-c"))
        .await
        .unwrap();
    assert_eq!(
        submit(&mut server.intake("supplier-c").await, "c-1")
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn certificates_from_another_ca_expired_or_duplicate_are_refused() {
    let server = TestServer::start().await;
    let mut admin = admin(&server).await;

    let rogue = TestCa::new("Schakel test CA").unwrap();
    let (foreign, _) = rogue
        .client_cert("supplier-a", &ClientCertOptions::default())
        .unwrap();
    assert_refused(
        admin
            .add_certificate(add_request(&foreign, "supplier", "", SUPPLIER_A))
            .await,
        Code::InvalidArgument,
        "CERTIFICATE_UNTRUSTED",
    );

    let now = SystemTime::now();
    let expired = ClientCertOptions {
        not_before: Some(now - Duration::from_secs(86_400)),
        not_after: Some(now - Duration::from_secs(3600)),
        ..ClientCertOptions::default()
    };
    let old = new_client_cert(&server, "old", &expired);
    assert_refused(
        admin
            .add_certificate(add_request(&old, "supplier", "", SUPPLIER_A))
            .await,
        Code::InvalidArgument,
        "CERTIFICATE_NOT_VALID",
    );
    assert_refused(
        admin
            .add_certificate(add_request(
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "supplier",
                "",
                SUPPLIER_A,
            ))
            .await,
        Code::InvalidArgument,
        "CERTIFICATE_UNPARSABLE",
    );
    // The harness's own supplier-a certificate is registered already.
    let existing = std::fs::read_to_string(server.certs().join("supplier-a.pem")).unwrap();
    assert_refused(
        admin
            .add_certificate(add_request(&existing, "supplier", "", SUPPLIER_A))
            .await,
        Code::AlreadyExists,
        "CERTIFICATE_EXISTS",
    );
    let fresh = new_client_cert(&server, "fresh", &ClientCertOptions::default());
    assert_refused(
        admin
            .add_certificate(add_request(&fresh, "supplier", "", "nobody"))
            .await,
        Code::NotFound,
        "SUPPLIER_NOT_FOUND",
    );
    assert_refused(
        admin
            .add_certificate(add_request(&fresh, "registry", "", SUPPLIER_A))
            .await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    // None of the refused ones got in.
    let count = admin
        .list_certificates(ListCertificatesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .certificates
        .len();
    assert_eq!(count, 4);
}

#[tokio::test]
async fn the_last_admin_cannot_lock_itself_out() {
    let server = TestServer::start().await;
    let mut admin1 = admin(&server).await;
    let admin_fp = fingerprint_of(&server, ADMIN);
    assert_refused(
        admin1
            .revoke_certificate(CertificateRef {
                fingerprint: admin_fp.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "LAST_ADMIN",
    );
    assert_refused(
        admin1
            .retire_certificate(RetireCertificateRequest {
                fingerprint: admin_fp.clone(),
                at: String::new(),
            })
            .await,
        Code::FailedPrecondition,
        "LAST_ADMIN",
    );
    // Still an admin.
    admin1
        .list_suppliers(ListSuppliersRequest {})
        .await
        .unwrap();

    // With a second admin certificate, the first may go; then the second is the last.
    let pem = new_client_cert(&server, "admin-2", &ClientCertOptions::default());
    let second = admin1
        .add_certificate(add_request(&pem, "admin", "admin 2", ""))
        .await
        .unwrap()
        .into_inner();
    admin1
        .revoke_certificate(CertificateRef {
            fingerprint: admin_fp,
        })
        .await
        .unwrap();
    assert_refused(
        admin1.list_suppliers(ListSuppliersRequest {}).await,
        Code::Unauthenticated,
        "CERTIFICATE_REVOKED",
    );
    let mut admin2 = AdminClient::new(server.channel("admin-2").await);
    assert_refused(
        admin2
            .revoke_certificate(CertificateRef {
                fingerprint: second.fingerprint,
            })
            .await,
        Code::FailedPrecondition,
        "LAST_ADMIN",
    );
    // A supplier certificate may not call the admin service at all.
    let mut as_supplier = AdminClient::new(server.channel(SUPPLIER_A).await);
    assert_refused(
        as_supplier.list_suppliers(ListSuppliersRequest {}).await,
        Code::PermissionDenied,
        "WRONG_ROLE",
    );
}

#[tokio::test]
async fn expiring_certificates_lists_those_that_run_out_soon() {
    let server = TestServer::start().await;
    let mut admin = admin(&server).await;
    let soon = ClientCertOptions {
        not_after: Some(SystemTime::now() + Duration::from_secs(10 * 86_400)),
        ..ClientCertOptions::default()
    };
    let pem = new_client_cert(&server, "short-lived", &soon);
    let added = admin
        .add_certificate(add_request(&pem, "supplier", "", SUPPLIER_B))
        .await
        .unwrap()
        .into_inner();
    let within = |days: u64| ExpiringCertificatesRequest {
        within_secs: days * 86_400,
    };
    let in_30: Vec<_> = admin
        .expiring_certificates(within(30))
        .await
        .unwrap()
        .into_inner()
        .certificates
        .into_iter()
        .map(|c| c.fingerprint)
        .collect();
    assert_eq!(in_30, [added.fingerprint]);
    let in_5 = admin.expiring_certificates(within(5)).await.unwrap();
    assert!(in_5.into_inner().certificates.is_empty());
}

#[tokio::test]
async fn every_admin_action_is_audited_with_its_outcome() {
    let server = TestServer::start().await;
    let start = SystemTime::now();
    let mut admin = admin(&server).await;
    admin
        .suspend_supplier(SupplierRef {
            id: SUPPLIER_B.into(),
        })
        .await
        .unwrap();
    admin
        .resume_supplier(SupplierRef {
            id: SUPPLIER_B.into(),
        })
        .await
        .unwrap();
    let admin_fp = fingerprint_of(&server, ADMIN);
    let _ = admin
        .revoke_certificate(CertificateRef {
            fingerprint: admin_fp.clone(),
        })
        .await
        .unwrap_err();
    admin.reload_tls(ReloadTlsRequest {}).await.unwrap();

    let events = admin
        .query_audit(QueryAuditRequest {
            from: humantime::format_rfc3339_nanos(start).to_string(),
            to: String::new(),
            actor_fingerprint: admin_fp.clone(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.action.as_str(), e.outcome.as_str(), e.detail.as_str()))
        .collect();
    let revoke_detail = format!("fingerprint={admin_fp}");
    assert_eq!(
        seen,
        [
            ("admin.suspend_supplier", "ok", "supplier=supplier-b"),
            ("admin.resume_supplier", "ok", "supplier=supplier-b"),
            (
                "admin.revoke_certificate",
                "refused: LAST_ADMIN",
                revoke_detail.as_str()
            ),
            ("admin.reload_tls", "ok", ""),
        ]
    );
    for e in &events {
        assert_eq!(e.actor_fingerprint, admin_fp);
        assert!(e.actor.contains("CN=admin"), "{e:?}");
        assert_eq!(e.role, "admin");
    }
    // Filters: another actor, or a window in the future, finds nothing.
    let none = admin
        .query_audit(QueryAuditRequest {
            actor_fingerprint: fingerprint_of(&server, SUPPLIER_A),
            ..QueryAuditRequest::default()
        })
        .await
        .unwrap();
    assert!(none.into_inner().events.is_empty());
    let later = humantime::format_rfc3339(SystemTime::now() + Duration::from_secs(3600));
    let none = admin
        .query_audit(QueryAuditRequest {
            from: later.to_string(),
            ..QueryAuditRequest::default()
        })
        .await
        .unwrap();
    assert!(none.into_inner().events.is_empty());
}

/// Client files that trust only `ca_pem` for the server.
fn trusting(server: &TestServer, name: &str, ca_pem: &str, file: &str) -> ClientFiles {
    let path: PathBuf = server.certs().join(file);
    std::fs::write(&path, ca_pem).unwrap();
    let mut files = server.files(name);
    files.ca = path;
    files
}

#[tokio::test]
async fn a_reloaded_server_certificate_is_seen_by_new_connections_while_old_ones_keep_working() {
    let server = TestServer::start_with(|c| c.tls.reload_poll_ms = 0).await;
    let mut admin = admin(&server).await;
    let mut old = server.intake(SUPPLIER_A).await;
    assert_eq!(submit(&mut old, "before").await.unwrap(), 1);

    // A new server certificate from a different server CA.
    let server_ca = TestCa::new("Schakel server CA 2").unwrap();
    let (cert, key) = server_ca.server_cert().unwrap();
    std::fs::write(server.certs().join("server.pem"), &cert).unwrap();
    std::fs::write(server.certs().join("server.key"), &key).unwrap();
    let report = admin
        .reload_tls(ReloadTlsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.server_fingerprint, fingerprint_of(&server, "server"));
    assert_eq!((report.client_cas, report.crls), (1, 0));

    let new_trust = trusting(
        &server,
        SUPPLIER_A,
        &server_ca.cert_pem(),
        "server-ca-2.pem",
    );
    assert_eq!(
        fresh_call(&server, &new_trust, "new-conn").await.unwrap(),
        1
    );
    // A client that trusts only the old server CA no longer gets in on a new connection.
    let status = fresh_call(&server, &server.files(SUPPLIER_A), "old-trust")
        .await
        .unwrap_err();
    assert!(
        chain(&status).contains("UnknownIssuer"),
        "{}",
        chain(&status)
    );
    // The connection opened before the reload still works.
    assert_eq!(submit(&mut old, "after").await.unwrap(), 1);
}

#[tokio::test]
async fn broken_tls_material_on_reload_keeps_the_old_material() {
    let server = TestServer::start_with(|c| c.tls.reload_poll_ms = 0).await;
    let mut admin = admin(&server).await;
    let good_cert = std::fs::read(server.certs().join("server.pem")).unwrap();
    let good_fp = fingerprint_of(&server, "server");

    // Garbage, a key that does not match, an expired certificate: all refused.
    std::fs::write(server.certs().join("server.pem"), "not a certificate").unwrap();
    assert_refused(
        admin.reload_tls(ReloadTlsRequest {}).await,
        Code::FailedPrecondition,
        "TLS_RELOAD_FAILED",
    );
    let (other_cert, _) = server.ca.server_cert().unwrap();
    std::fs::write(server.certs().join("server.pem"), &other_cert).unwrap();
    let status = admin.reload_tls(ReloadTlsRequest {}).await.unwrap_err();
    assert_eq!(code_of(&status), "TLS_RELOAD_FAILED");
    assert!(status.message().contains("does not match"), "{status:?}");
    let now = SystemTime::now();
    let (expired_cert, expired_key) = server
        .ca
        .server_cert_with(&ClientCertOptions {
            not_before: Some(now - Duration::from_secs(86_400)),
            not_after: Some(now - Duration::from_secs(60)),
            ..ClientCertOptions::default()
        })
        .unwrap();
    std::fs::write(server.certs().join("server.pem"), &expired_cert).unwrap();
    let good_key = std::fs::read(server.certs().join("server.key")).unwrap();
    std::fs::write(server.certs().join("server.key"), &expired_key).unwrap();
    let status = admin.reload_tls(ReloadTlsRequest {}).await.unwrap_err();
    assert_eq!(code_of(&status), "TLS_RELOAD_FAILED");
    assert!(status.message().contains("expired"), "{status:?}");

    // New connections still get the old certificate and work.
    assert_eq!(
        fresh_call(&server, &server.files(SUPPLIER_A), "still")
            .await
            .unwrap(),
        1
    );
    std::fs::write(server.certs().join("server.pem"), &good_cert).unwrap();
    std::fs::write(server.certs().join("server.key"), &good_key).unwrap();
    let report = admin
        .reload_tls(ReloadTlsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.server_fingerprint, good_fp);
}

#[tokio::test]
async fn a_crl_entry_fails_the_handshake_after_the_files_change() {
    let mut server = TestServer::start().await;
    let crl = server.certs().join("crl.pem");
    std::fs::write(&crl, server.ca.crl_pem(&[]).unwrap()).unwrap();
    server.config.tls.crls = vec![crl.clone()];
    server.config.tls.reload_poll_ms = 100;
    server.restart().await;

    let serial = 0x4242_u64;
    let pem = new_client_cert(
        &server,
        "listed",
        &ClientCertOptions {
            serial: Some(serial),
            ..ClientCertOptions::default()
        },
    );
    let mut admin = admin(&server).await;
    admin
        .add_certificate(add_request(&pem, "supplier", "", SUPPLIER_A))
        .await
        .unwrap();
    assert_eq!(
        fresh_call(&server, &server.files("listed"), "m-1")
            .await
            .unwrap(),
        1
    );

    // Publish a CRL listing it; the poller picks the change up.
    std::fs::write(&crl, server.ca.crl_pem(&[serial]).unwrap()).unwrap();
    let mut n = 0;
    let refused = eventually(|| {
        n += 1;
        let id = format!("poll-{n}");
        let server = &server;
        async move {
            fresh_call(server, &server.files("listed"), &id)
                .await
                .is_err()
        }
    })
    .await;
    assert!(refused, "the CRL entry was never enforced");
    let status = fresh_call(&server, &server.files("listed"), "m-2")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(chain(&status).contains("Revoked"), "{}", chain(&status));
    // Everyone else still gets in.
    assert_eq!(
        fresh_call(&server, &server.files(SUPPLIER_B), "b")
            .await
            .unwrap(),
        1
    );
}

/// SIGHUP goes to a child gateway (the real `schakel serve`), never to the
/// test process itself, which other tests in this binary share.
#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_server_certificate() {
    use common::process::ChildGateway;
    let gw = ChildGateway::start_with(&[], &[("tls", "reload_poll_ms = 0")]);
    let call = |files: ClientFiles, id: String| {
        let url = gw.url();
        async move {
            let channel = schakel::client::connect(&url, &files)
                .await
                .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
            submit(&mut IntakeClient::new(channel), &id).await
        }
    };
    // Serving (so the signal handler is in place) with the first certificate.
    let _ = gw.channel("supplier-a", Duration::from_secs(60)).await;
    assert_eq!(
        call(gw.files("supplier-a"), "before".into()).await.unwrap(),
        1
    );
    let server_ca = TestCa::new("Schakel server CA 3").unwrap();
    let (cert, key) = server_ca.server_cert().unwrap();
    let ca_file = gw.dir.path().join("server-ca-3.pem");
    std::fs::write(&ca_file, server_ca.cert_pem()).unwrap();
    let new_trust = ClientFiles {
        ca: ca_file,
        ..gw.files("supplier-a")
    };
    // Polling is off: without the signal the old certificate stays.
    std::fs::write(gw.dir.path().join("server.pem"), &cert).unwrap();
    std::fs::write(gw.dir.path().join("server.key"), &key).unwrap();
    let status = call(new_trust.clone(), "not-yet".into())
        .await
        .expect_err("reloaded without a signal");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    gw.signal("HUP");
    let mut n = 0;
    let seen = eventually(|| {
        n += 1;
        let (files, id) = (new_trust.clone(), format!("poll-{n}"));
        let call = &call;
        async move { call(files, id).await.is_ok() }
    })
    .await;
    assert!(seen, "SIGHUP did not reload the server certificate");
    // The process survived the signal and still serves.
    assert_eq!(call(new_trust, "after".into()).await.unwrap(), 1);
}

/// A raw TLS + HTTP/2 connection as `name` (preface and SETTINGS sent), to watch
/// the connection itself rather than a channel that reconnects on its own.
async fn raw_h2(
    server: &TestServer,
    name: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    let certs = server.certs();
    let mut roots = rustls::RootCertStore::empty();
    for ca in schakel::tls::load_certs(&certs.join("ca.pem")).unwrap() {
        roots.add(ca).unwrap();
    }
    let chain = schakel::tls::load_certs(&certs.join(format!("{name}.pem"))).unwrap();
    let key = schakel::tls::load_key(&certs.join(format!("{name}.key"))).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tls.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    tls.flush().await.unwrap();
    tls
}

/// Reads HTTP/2 frames until a PING ACK (true) or the end of the connection (false).
async fn read_until_ping_ack_or_eof(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> bool {
    use tokio::io::AsyncReadExt;
    loop {
        let mut header = [0u8; 9];
        if tls.read_exact(&mut header).await.is_err() {
            return false;
        }
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        if tls.read_exact(&mut payload).await.is_err() {
            return false;
        }
        if header[3] == 6 && header[4] & 1 == 1 {
            return true;
        }
    }
}

async fn ping(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) {
    use tokio::io::AsyncWriteExt;
    tls.write_all(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .unwrap();
    tls.flush().await.unwrap();
}

/// Pings until the connection ends (bounded by a guard timeout); true if it ended.
async fn ends(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> bool {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            ping(tls).await;
            if !read_until_ping_ack_or_eof(tls).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn the_open_connections_of_a_revoked_certificate_or_suspended_supplier_are_closed() {
    let server = TestServer::start_with(|c| c.tls.close_revoked_every_ms = 100).await;
    let mut revoked = raw_h2(&server, SUPPLIER_B).await;
    let mut suspended = raw_h2(&server, SUPPLIER_A).await;
    let mut kept = raw_h2(&server, REGISTRY).await;
    // All connections are up: each answers a PING.
    for conn in [&mut revoked, &mut suspended, &mut kept] {
        ping(conn).await;
        assert!(read_until_ping_ack_or_eof(conn).await);
    }

    let mut admin = admin(&server).await;
    admin
        .revoke_certificate(CertificateRef {
            fingerprint: fingerprint_of(&server, SUPPLIER_B),
        })
        .await
        .unwrap();
    admin
        .suspend_supplier(SupplierRef {
            id: SUPPLIER_A.into(),
        })
        .await
        .unwrap();
    // The sweeper runs every 100 ms; the guard timeout only prevents a hang.
    assert!(
        ends(&mut revoked).await,
        "the revoked certificate's connection stayed open"
    );
    assert!(
        ends(&mut suspended).await,
        "the suspended supplier's connection stayed open"
    );
    // The registry's connection is untouched.
    ping(&mut kept).await;
    assert!(read_until_ping_ack_or_eof(&mut kept).await);
}

/// Runs `schakel admin <args>` against the test server as the admin; (exit ok, stdout, stderr).
async fn cli(server: &TestServer, args: &[&str]) -> (bool, String, String) {
    let certs = server.certs();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_schakel"));
    command
        .arg("admin")
        .arg("--server")
        .arg(server.url())
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("admin.pem"))
        .arg("--key")
        .arg(certs.join("admin.key"))
        .args(args);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn the_cli_rotates_a_certificate_as_the_readme_says() {
    let server = TestServer::start().await;
    new_client_cert(&server, "supplier-a-2027", &ClientCertOptions::default());
    let pem = server.certs().join("supplier-a-2027.pem");
    let (ok, out, err) = cli(
        &server,
        &[
            "certs",
            "add",
            "--pem",
            pem.to_str().unwrap(),
            "--role",
            "supplier",
            "--supplier",
            SUPPLIER_A,
            "--name",
            "supplier-a 2027",
            "--json",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let added: Vec<CertificateInfo> = serde_json::from_str(&out).unwrap();
    assert_eq!(
        added[0].fingerprint,
        fingerprint_of(&server, "supplier-a-2027")
    );

    let old = fingerprint_of(&server, SUPPLIER_A);
    let (ok, out, err) = cli(&server, &["certs", "retire", &old[..12], "--at", "+1h"]).await;
    assert!(ok, "{err}");
    assert!(out.contains(&old) && out.contains("retiring"), "{out}");

    let (ok, out, err) = cli(&server, &["certs", "list", "--supplier", SUPPLIER_A]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("FINGERPRINT"), "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");

    // A refusal exits non-zero and names the stable code.
    let admin_fp = fingerprint_of(&server, ADMIN);
    let (ok, _, err) = cli(&server, &["certs", "revoke", &admin_fp]).await;
    assert!(!ok);
    assert!(err.contains("LAST_ADMIN"), "{err}");

    let (ok, out, err) = cli(&server, &["audit", "--from", "1h", "--json"]).await;
    assert!(ok, "{err}");
    let events: Vec<AuditEntry> = serde_json::from_str(&out).unwrap();
    let actions: Vec<_> = events
        .iter()
        .filter(|e| e.action != "admin.list_certificates")
        .map(|e| (e.action.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("admin.add_certificate", "ok"),
            ("admin.retire_certificate", "ok"),
            ("admin.revoke_certificate", "refused: LAST_ADMIN"),
        ]
    );
}

/// `schakel admin suppliers list --json` with its connection from the
/// environment only (`vars` plus `SCHAKEL_SERVER`), none inherited.
async fn admin_cli_with_env(
    url: String,
    vars: Vec<(&'static str, PathBuf)>,
) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_schakel"));
    command
        .args(["admin", "suppliers", "list", "--json"])
        .env("SCHAKEL_SERVER", url);
    for var in [
        "SCHAKEL_CA",
        "SCHAKEL_CERT",
        "SCHAKEL_KEY",
        "SCHAKEL_DOMAIN",
    ] {
        command.env_remove(var);
    }
    command.envs(vars);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_cli_takes_its_connection_from_the_environment_or_a_client_config() {
    let server = TestServer::start().await;
    let certs = server.certs();
    let out = admin_cli_with_env(
        server.url(),
        vec![
            ("SCHAKEL_CA", certs.join("ca.pem")),
            ("SCHAKEL_CERT", certs.join("admin.pem")),
            ("SCHAKEL_KEY", certs.join("admin.key")),
        ],
    )
    .await;
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(SUPPLIER_A), "{stdout}");

    // A supplier's certificate from the environment: the gateway refuses it.
    let out = admin_cli_with_env(
        server.url(),
        vec![
            ("SCHAKEL_CA", certs.join("ca.pem")),
            ("SCHAKEL_CERT", certs.join(format!("{SUPPLIER_A}.pem"))),
            ("SCHAKEL_KEY", certs.join(format!("{SUPPLIER_A}.key"))),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("WRONG_ROLE"), "{stderr}");

    // A client config file, paths relative to it (no SCHAKEL_SERVER either).
    let config = certs.join("admin-client.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"{}\"\nca = \"ca.pem\"\ncert = \"admin.pem\"\nkey = \"admin.key\"\n",
            server.url()
        ),
    )
    .unwrap();
    let out = admin_cli_with_env(
        "https://localhost:1".into(),
        vec![("SCHAKEL_CLIENT_CONFIG", config.clone())],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // SCHAKEL_SERVER (set by the helper) wins over the file: port 1 refuses.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("connecting to https://localhost:1"),
        "{stderr}"
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_schakel"))
            .args(["admin", "--client-config"])
            .arg(&config)
            .args(["suppliers", "list", "--json"])
            .env_remove("SCHAKEL_SERVER")
            .env_remove("SCHAKEL_CA")
            .env_remove("SCHAKEL_CERT")
            .env_remove("SCHAKEL_KEY")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(SUPPLIER_A), "{stdout}");
}

#[tokio::test]
async fn a_large_audit_answer_is_cut_to_the_newest_events_and_says_so() {
    use schakel::store::{AuditEvent, Store, StoreOptions};

    let mut server = TestServer::start().await;
    server.stop().await;
    {
        // 40 events of 100 KB each: 4 MB, over what one answer may carry.
        let store = Store::open(&server.config.data_dir, StoreOptions::default()).unwrap();
        let start = SystemTime::now() - Duration::from_secs(3600);
        for i in 0..40u64 {
            store
                .audit(AuditEvent {
                    at: start + Duration::from_secs(i),
                    actor_fingerprint: "e".repeat(64),
                    actor: "bulk".into(),
                    role: None,
                    action: format!("bulk-{i:02}"),
                    detail: "m".repeat(100_000),
                    outcome: "ok".into(),
                })
                .unwrap();
        }
        store.sync().await.unwrap();
    }
    server.restart().await;
    let mut admin = admin(&server).await;
    let answer = admin
        .query_audit(QueryAuditRequest {
            actor_fingerprint: "e".repeat(64),
            ..QueryAuditRequest::default()
        })
        .await
        .expect("the answer fits a default client")
        .into_inner();
    assert!(answer.truncated);
    let actions: Vec<&str> = answer.events.iter().map(|e| e.action.as_str()).collect();
    // The newest that fit in 3 MiB (about 31 of 100 KB), in time order.
    assert_eq!(actions.last(), Some(&"bulk-39"), "{actions:?}");
    assert!((25..40).contains(&actions.len()), "{}", actions.len());
    let expected: Vec<String> = (40 - actions.len()..40)
        .map(|i| format!("bulk-{i:02}"))
        .collect();
    assert_eq!(actions, expected);
    // A narrower query is whole and not truncated.
    let small = admin
        .query_audit(QueryAuditRequest {
            actor_fingerprint: "e".repeat(64),
            limit: 3,
            ..QueryAuditRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(small.events.len(), 3);
    assert!(small.truncated, "3 of 40: the count limit cut it");
    let none_cut = admin
        .query_audit(QueryAuditRequest {
            actor_fingerprint: fingerprint_of(&server, ADMIN),
            ..QueryAuditRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!none_cut.truncated, "{none_cut:?}");
}

/// Issue 17, hole 1: the start-up seeding registers only what the store does
/// not know, so a restart on the same data must not undo a revocation, a
/// retirement or a suspension of identities and suppliers that came from the
/// config. Each refusal is checked before and after the restart, with the same
/// gRPC code and `schakel-error-code`.
#[tokio::test]
async fn revoke_retire_and_suspend_survive_a_restart() {
    let mut server = TestServer::start().await;
    let mut admin_client = admin(&server).await;
    // All three are seeded from the config (what a seeding that overwrites would undo).
    admin_client
        .revoke_certificate(CertificateRef {
            fingerprint: fingerprint_of(&server, SUPPLIER_A),
        })
        .await
        .unwrap();
    let retired = admin_client
        .retire_certificate(RetireCertificateRequest {
            fingerprint: fingerprint_of(&server, REGISTRY),
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retired.status, "retired", "{retired:?}");
    admin_client
        .suspend_supplier(SupplierRef {
            id: SUPPLIER_B.into(),
        })
        .await
        .unwrap();
    drop(admin_client);

    async fn check(server: &TestServer, when: &str) {
        let refused = |what: &str| format!("{what} {when}");
        let a = fresh_call(server, &server.files(SUPPLIER_A), "a").await;
        let status = a.expect_err(&refused("revoked supplier-a served"));
        assert_eq!(
            (status.code(), code_of(&status)),
            (Code::Unauthenticated, "CERTIFICATE_REVOKED"),
            "{when}: {status:?}"
        );
        let b = fresh_call(server, &server.files(SUPPLIER_B), "b").await;
        let status = b.expect_err(&refused("suspended supplier-b served"));
        assert_eq!(
            (status.code(), code_of(&status)),
            (Code::PermissionDenied, "SUPPLIER_SUSPENDED"),
            "{when}: {status:?}"
        );
        let status = server
            .registry()
            .await
            .pull(pull_request(10, 0, 1000))
            .await
            .expect_err(&refused("retired registry served"));
        assert_eq!(
            (status.code(), code_of(&status)),
            (Code::Unauthenticated, "CERTIFICATE_RETIRED"),
            "{when}: {status:?}"
        );
        // The admin, untouched, still works and still sees the states.
        let mut admin_client = admin(server).await;
        let list = admin_client
            .list_certificates(ListCertificatesRequest::default())
            .await
            .unwrap()
            .into_inner();
        let status_of = |fp: String| {
            list.certificates
                .iter()
                .find(|c| c.fingerprint == fp)
                .map(|c| c.status.clone())
                .unwrap_or_default()
        };
        assert_eq!(
            status_of(fingerprint_of(server, SUPPLIER_A)),
            "revoked",
            "{when}"
        );
        assert_eq!(
            status_of(fingerprint_of(server, REGISTRY)),
            "retired",
            "{when}"
        );
        let shown = admin_client
            .get_supplier(SupplierRef {
                id: SUPPLIER_B.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(shown.suspended, "{when}: {shown:?}");
    }
    check(&server, "before the restart").await;
    server.restart().await;
    check(&server, "after the restart").await;
    server.restart().await;
    check(&server, "after a second restart").await;
}

/// A revocation or suspension that was answered OK is on disk: the real
/// `schakel serve` is SIGKILLed right after the answer and restarted, and the
/// refusals hold (the store syncs before the admin call answers; sled by
/// itself would flush its buffers only every `store.flush_every_ms`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_revocation_survives_a_sigkill() {
    use common::process::ChildGateway;
    let gw = ChildGateway::start(&[]);
    let fingerprint = |name: &str| {
        let certs = schakel::tls::load_certs(&gw.dir.path().join(format!("{name}.pem"))).unwrap();
        schakel::tls::fingerprint(certs[0].as_ref())
    };
    let mut admin_client = AdminClient::new(gw.channel("admin", Duration::from_secs(60)).await);
    admin_client
        .revoke_certificate(CertificateRef {
            fingerprint: fingerprint("supplier-a"),
        })
        .await
        .unwrap();
    admin_client
        .suspend_supplier(SupplierRef {
            id: "supplier-b".into(),
        })
        .await
        .unwrap();
    gw.kill();
    gw.spawn();
    let submit_as = |name: &'static str| {
        let gw = &gw;
        async move {
            let channel = gw.channel(name, Duration::from_secs(60)).await;
            submit(&mut IntakeClient::new(channel), "after-kill").await
        }
    };
    assert_refused(
        submit_as("supplier-a").await,
        Code::Unauthenticated,
        "CERTIFICATE_REVOKED",
    );
    assert_refused(
        submit_as("supplier-b").await,
        Code::PermissionDenied,
        "SUPPLIER_SUSPENDED",
    );
    assert_eq!(submit_as("supplier-c").await.unwrap(), 1);
}
