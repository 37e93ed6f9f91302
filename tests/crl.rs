//! CRLs and CA changes reach connections that are already open (issue 11 item 3):
//! after a TLS reload every open connection's chain is re-verified against the new
//! CAs and CRLs and the failing ones are closed (audited, counted); revocation is
//! checked along the whole chain; an expired CRL is reported or refused; an unusable
//! CRL is refused in words.
//!
//! Real gateway, real mTLS, real sled store (`schakel::testkit`).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use schakel::client::ClientFiles;
use schakel::proto::admin_client::AdminClient;
use schakel::proto::intake_client::IntakeClient;
use schakel::proto::*;
use schakel::tls::dev::{ClientCertOptions, CrlOptions, TestCa};
use schakel::tls::CrlExpiredPolicy;
use tonic::transport::Channel;
use tonic::Code;

/// A v2 CRL without the CRL number extension, indeed without any extension (made once
/// with Python `cryptography`: a CRL builder given no extensions). rustls used to refuse it
/// with only "ParseError".
const CRL_WITHOUT_NUMBER: &str = "\
-----BEGIN X509 CRL-----
MIGgMEgCAQEwCgYIKoZIzj0EAwIwGTEXMBUGA1UEAwwOQ1JMIGZpeHR1cmUgQ0EX
DTI2MDEwMTAwMDAwMFoXDTM1MTIzMDAwMDAwMFowCgYIKoZIzj0EAwIDSAAwRQIh
AKeCIXP4jpNtb78BjzIEar03CnPUauZcOVUpg2eSYxDeAiARs0MWR50occrgBcS4
2Q900++dJS3XqNanIjzEJuObLw==
-----END X509 CRL-----
";

async fn admin(server: &TestServer) -> AdminClient<Channel> {
    AdminClient::new(server.channel(ADMIN).await)
}

async fn submit(intake: &mut IntakeClient<Channel>, id: &str) -> Result<u32, tonic::Status> {
    intake
        .submit_batch(batch(id, vec![record(id)]))
        .await
        .map(|r| r.into_inner().accepted)
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

fn cert_info(path: &Path) -> schakel::tls::CertInfo {
    let certs = schakel::tls::load_certs(path).unwrap();
    schakel::tls::describe(certs[0].as_ref()).unwrap()
}

fn serial_of(server: &TestServer, name: &str) -> u64 {
    let info = cert_info(&server.certs().join(format!("{name}.pem")));
    u64::from_str_radix(&info.serial, 16).unwrap()
}

fn fingerprint_of(server: &TestServer, name: &str) -> String {
    cert_info(&server.certs().join(format!("{name}.pem"))).fingerprint
}

/// A gateway whose config lists `certs/crl.pem`, an empty CRL of the test CA.
async fn with_crl(tweak: impl FnOnce(&mut schakel::config::Config)) -> (TestServer, PathBuf) {
    let mut server = TestServer::start_with(|c| c.tls.reload_poll_ms = 0).await;
    let crl = server.certs().join("crl.pem");
    std::fs::write(&crl, server.ca.crl_pem(&[]).unwrap()).unwrap();
    server.config.tls.crls = vec![crl.clone()];
    tweak(&mut server.config);
    server.restart().await;
    (server, crl)
}

/// The audit events `tls.connection_closed`: (actor fingerprint, outcome).
async fn closings(admin: &mut AdminClient<Channel>) -> Vec<(String, String)> {
    admin
        .query_audit(QueryAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .filter(|e| e.action == "tls.connection_closed")
        .map(|e| (e.actor_fingerprint, e.outcome))
        .collect()
}

/// The value of one metric line (`name{labels}`), if present.
async fn metric(server: &TestServer, line_start: &str) -> Option<String> {
    let (status, body) = server.http_get("/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_owned)
}

/// The open channel's next two calls after its connection was closed. The first fails
/// with UNKNOWN "transport error": either the channel already saw the connection end and
/// reconnected, and the new handshake was refused with `alert`, or (a call racing the
/// close) the old connection broke under it. The second always reconnects and gets the
/// TLS alert `alert` (e.g. "CertificateRevoked").
async fn assert_channel_refused(intake: &mut IntakeClient<Channel>, id: &str, alert: &str) {
    let status = submit(intake, &format!("{id}-first")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(status.message(), "transport error", "{status:?}");
    let status = submit(intake, &format!("{id}-second")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(
        chain(&status).contains(&format!("received fatal alert: {alert}")),
        "{}",
        chain(&status)
    );
}

#[tokio::test]
async fn a_certificate_listed_in_a_reloaded_crl_loses_its_open_channel_at_the_reload() {
    let (server, crl) = with_crl(|_| {}).await;
    let mut admin = admin(&server).await;
    let mut a = server.intake(SUPPLIER_A).await;
    let mut b = server.intake(SUPPLIER_B).await;
    assert_eq!(submit(&mut a, "a-1").await.unwrap(), 1);
    assert_eq!(submit(&mut b, "b-1").await.unwrap(), 1);

    std::fs::write(
        &crl,
        server
            .ca
            .crl_pem(&[serial_of(&server, SUPPLIER_A)])
            .unwrap(),
    )
    .unwrap();
    let report = admin.reload_tls(ReloadTlsRequest {}).await.unwrap();
    assert_eq!(report.into_inner().crls, 1);

    // The reload answered only after closing: the very next call on the open channel fails.
    assert_channel_refused(&mut a, "a-2", "CertificateRevoked").await;
    // The others' open channels keep working.
    assert_eq!(submit(&mut b, "b-2").await.unwrap(), 1);
    assert_eq!(
        closings(&mut admin).await,
        vec![(
            fingerprint_of(&server, SUPPLIER_A),
            "CERTIFICATE_REVOKED_BY_CRL".to_owned()
        )]
    );
    assert_eq!(
        metric(
            &server,
            "schakel_tls_connections_closed_total{reason=\"CERTIFICATE_REVOKED_BY_CRL\"}"
        )
        .await
        .as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn a_crl_picked_up_by_the_file_poll_closes_the_open_channel_within_the_interval() {
    let (server, crl) = with_crl(|c| c.tls.reload_poll_ms = 200).await;
    let mut a = server.intake(SUPPLIER_A).await;
    assert_eq!(submit(&mut a, "a-1").await.unwrap(), 1);

    std::fs::write(
        &crl,
        server
            .ca
            .crl_pem(&[serial_of(&server, SUPPLIER_A)])
            .unwrap(),
    )
    .unwrap();
    let status = wait_until_refused(&mut a).await;
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_channel_refused(&mut a, "a-after", "CertificateRevoked").await;
}

/// Calls on the same channel until one fails (the file poll reloaded and closed the
/// connection), at most 5 s after the change; successes before the poll ran are fine.
async fn wait_until_refused(a: &mut IntakeClient<Channel>) -> tonic::Status {
    let written = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        match submit(a, &format!("a-poll-{n}")).await {
            Ok(_) => {
                assert!(
                    written.elapsed() < Duration::from_secs(5),
                    "still served {:?} after the CRL changed",
                    written.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => return status,
        }
    }
}

#[tokio::test]
async fn removing_a_ca_from_the_bundle_closes_the_connections_of_its_certificates() {
    let server = TestServer::start_with(|c| c.tls.reload_poll_ms = 0).await;
    let other = TestCa::new("Schakel second supplier CA").unwrap();
    let bundle = server.certs().join("ca.pem");
    let own_ca = std::fs::read_to_string(&bundle).unwrap();
    std::fs::write(&bundle, format!("{own_ca}{}", other.cert_pem())).unwrap();
    let mut admin = admin(&server).await;
    admin.reload_tls(ReloadTlsRequest {}).await.unwrap();

    let (cert, key) = other
        .client_cert("supplier-a-other-ca", &ClientCertOptions::default())
        .unwrap();
    std::fs::write(server.certs().join("other.pem"), &cert).unwrap();
    std::fs::write(server.certs().join("other.key"), &key).unwrap();
    admin
        .add_certificate(AddCertificateRequest {
            pem: cert,
            role: "supplier".into(),
            name: "supplier-a via second CA".into(),
            supplier_id: SUPPLIER_A.into(),
        })
        .await
        .unwrap();
    let mut moved = IntakeClient::new(
        schakel::client::connect(&server.url(), &server.files("other"))
            .await
            .unwrap(),
    );
    let mut a = server.intake(SUPPLIER_A).await;
    assert_eq!(submit(&mut moved, "o-1").await.unwrap(), 1);

    std::fs::write(&bundle, own_ca).unwrap();
    admin.reload_tls(ReloadTlsRequest {}).await.unwrap();
    assert_channel_refused(&mut moved, "o-2", "UnknownCA").await;
    assert_eq!(submit(&mut a, "a-1").await.unwrap(), 1);
    assert_eq!(
        closings(&mut admin).await,
        vec![(
            fingerprint_of(&server, "other"),
            "CERTIFICATE_UNTRUSTED".to_owned()
        )]
    );
}

#[tokio::test]
async fn revoking_an_intermediate_ca_refuses_its_leaves_at_the_handshake_and_on_open_channels() {
    let mut server = TestServer::start_with(|c| c.tls.reload_poll_ms = 0).await;
    let intermediate = server
        .ca
        .intermediate("Schakel test issuing CA", Some(0x1c4))
        .unwrap();
    let (cert, key) = intermediate
        .client_cert("supplier-a-via-issuing-ca", &ClientCertOptions::default())
        .unwrap();
    std::fs::write(server.certs().join("chained.pem"), &cert).unwrap();
    std::fs::write(server.certs().join("chained.key"), &key).unwrap();
    // One CRL per CA of the chain: the root's, and the issuing CA's (whose name is not
    // in the bundle: it is sent by the client).
    let root_crl = server.certs().join("root.crl.pem");
    let issuing_crl = server.certs().join("issuing.crl.pem");
    std::fs::write(&root_crl, server.ca.crl_pem(&[]).unwrap()).unwrap();
    std::fs::write(&issuing_crl, intermediate.crl_pem(&[]).unwrap()).unwrap();
    server.config.tls.crls = vec![root_crl.clone(), issuing_crl];
    server.restart().await;

    let mut admin = admin(&server).await;
    admin
        .add_certificate(AddCertificateRequest {
            pem: cert,
            role: "supplier".into(),
            name: "supplier-a via issuing CA".into(),
            supplier_id: SUPPLIER_A.into(),
        })
        .await
        .unwrap();
    let files = server.files("chained");
    let mut chained = IntakeClient::new(
        schakel::client::connect(&server.url(), &files)
            .await
            .unwrap(),
    );
    assert_eq!(submit(&mut chained, "c-1").await.unwrap(), 1);

    // The root revokes the issuing CA; the leaf itself is in no CRL.
    std::fs::write(&root_crl, server.ca.crl_pem(&[0x1c4]).unwrap()).unwrap();
    admin.reload_tls(ReloadTlsRequest {}).await.unwrap();
    assert_channel_refused(&mut chained, "c-2", "CertificateRevoked").await;
    let status = fresh_call(&server, &files, "c-3").await.unwrap_err();
    assert!(chain(&status).contains("Revoked"), "{}", chain(&status));
    assert_eq!(
        closings(&mut admin).await,
        vec![(
            fingerprint_of(&server, "chained"),
            "CERTIFICATE_REVOKED_BY_CRL".to_owned()
        )]
    );
    // Certificates straight from the root are unaffected.
    assert_eq!(
        fresh_call(&server, &server.files(SUPPLIER_B), "b-1")
            .await
            .unwrap(),
        1
    );
}

fn expired_crl(ca: &TestCa) -> String {
    let now = SystemTime::now();
    ca.crl_pem_with(
        &[],
        &CrlOptions {
            this_update: Some(now - Duration::from_secs(7 * 86_400)),
            next_update: Some(now - Duration::from_secs(3600)),
        },
    )
    .unwrap()
}

#[tokio::test]
async fn by_default_an_expired_crl_is_reported_and_still_used() {
    let (server, crl) = with_crl(|c| assert_eq!(c.tls.crl_expired, CrlExpiredPolicy::Warn)).await;
    std::fs::write(&crl, expired_crl(&server.ca)).unwrap();
    let mut admin = admin(&server).await;
    let mut a = server.intake(SUPPLIER_A).await;
    admin.reload_tls(ReloadTlsRequest {}).await.unwrap();

    assert_eq!(submit(&mut a, "a-1").await.unwrap(), 1);
    assert_eq!(
        fresh_call(&server, &server.files(SUPPLIER_B), "b-1")
            .await
            .unwrap(),
        1
    );
    let line = format!("schakel_crl_expired{{file=\"{}\"}}", crl.display());
    assert_eq!(metric(&server, &line).await.as_deref(), Some("1"));
    let next = format!(
        "schakel_crl_next_update_seconds{{file=\"{}\"}}",
        crl.display()
    );
    let next: f64 = metric(&server, &next).await.unwrap().parse().unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(next < now && next > now - 7200.0, "{next} vs {now}");
    let (status, page) = server.http_get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("CRL past its nextUpdate"), "{page}");
    assert!(page.contains("crl.pem"), "{page}");

    // A fresh CRL clears it.
    std::fs::write(&crl, server.ca.crl_pem(&[]).unwrap()).unwrap();
    admin.reload_tls(ReloadTlsRequest {}).await.unwrap();
    assert_eq!(metric(&server, &line).await.as_deref(), Some("0"));
}

#[tokio::test]
async fn with_crl_expired_refuse_an_expired_crl_refuses_handshakes_and_closes_open_channels() {
    let (server, crl) = with_crl(|c| {
        c.tls.crl_expired = CrlExpiredPolicy::Refuse;
        c.tls.reload_poll_ms = 200;
    })
    .await;
    let mut a = server.intake(SUPPLIER_A).await;
    assert_eq!(submit(&mut a, "a-1").await.unwrap(), 1);

    // Every client certificate of the test CA now depends on the expired CRL (the
    // admin's too, so the file poll reloads it rather than an admin call).
    std::fs::write(&crl, expired_crl(&server.ca)).unwrap();
    wait_until_refused(&mut a).await;
    assert_channel_refused(&mut a, "a-2", "UnknownCA").await;
    let status = fresh_call(&server, &server.files(SUPPLIER_B), "b-1")
        .await
        .unwrap_err();
    assert!(
        chain(&status).contains("received fatal alert: UnknownCA"),
        "{}",
        chain(&status)
    );
    assert_eq!(
        metric(
            &server,
            "schakel_tls_connections_closed_total{reason=\"CRL_EXPIRED\"}"
        )
        .await
        .as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn an_unusable_crl_is_refused_at_reload_saying_why_and_the_old_material_stays() {
    let (server, crl) = with_crl(|_| {}).await;
    let mut admin = admin(&server).await;
    let foreign = TestCa::new("Schakel test CA").unwrap(); // same name, other key
    let cases: Vec<(String, &str)> = vec![
        (
            CRL_WITHOUT_NUMBER.to_owned(),
            "has no CRL number extension (RFC 5280 5.2.3)",
        ),
        (
            server.ca.cert_pem(),
            "the file holds a certificate, not a CRL",
        ),
        ("garbage".to_owned(), "no CRLs found"),
        (
            foreign.crl_pem(&[]).unwrap(),
            "the signature does not verify with the key of",
        ),
    ];
    for (contents, why) in cases {
        std::fs::write(&crl, contents).unwrap();
        let status = admin.reload_tls(ReloadTlsRequest {}).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_eq!(code_of(&status), "TLS_RELOAD_FAILED", "{status:?}");
        assert!(status.message().contains(why), "{why}: {status:?}");
        assert!(status.message().contains("crl.pem"), "{status:?}");
    }
    // The previous material stays in force.
    assert_eq!(
        fresh_call(&server, &server.files(SUPPLIER_A), "a-1")
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn a_crl_without_a_crl_number_stops_the_start_with_a_clear_error() {
    let mut server = TestServer::start().await;
    server.stop().await;
    let crl = server.certs().join("crl.pem");
    std::fs::write(&crl, CRL_WITHOUT_NUMBER).unwrap();
    let mut config = server.config.clone();
    config.tls.crls = vec![crl];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = schakel::server::run_with_http(config, listener, None, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("reading CRL ")
            && err.contains(
                "crl.pem: CRL #1: issued by CN=CRL fixture CA has no CRL number extension"
            ),
        "{err}"
    );
}
