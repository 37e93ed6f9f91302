//! UZI server certificates over the wire (issue 15): a real gateway on
//! 127.0.0.1 port 0 with real mTLS, a real sled store and real gRPC clients.
//! The client CA bundle holds the harness CA and a test UZI server CA (and, for
//! one test, a second UZI-shaped CA that is in the bundle but not configured as
//! `tls.uzi_server_ca`). Suppliers: `his-u` (URA 90000011, policy `ura`) and
//! `his-p` (URA 90000012, policy `pinned`).

mod common;

use std::path::PathBuf;

use common::*;
use schakel::client::ClientFiles;
use schakel::config::SeedSupplier;
use schakel::proto::admin_client::AdminClient;
use schakel::proto::intake_client::IntakeClient;
use schakel::proto::registry_client::RegistryClient;
use schakel::proto::*;
use schakel::store::IdentityPolicy;
use schakel::uzi::dev::{UziCertOptions, UziTestCa, TEST_UZI_CA_CN};
use tonic::transport::Channel;
use tonic::Code;

const URA_U: &str = "90000011";
const URA_P: &str = "90000012";

struct Uzi {
    server: TestServer,
    /// The configured UZI server CA.
    ca: UziTestCa,
    /// In the client CA bundle, but not a UZI server CA of the config; same
    /// name as `ca`, another key.
    bundle_only: UziTestCa,
}

async fn start() -> Uzi {
    let ca = UziTestCa::new(TEST_UZI_CA_CN).unwrap();
    // The very name of the UZI CA, another key: only the signature tells them apart.
    let bundle_only = UziTestCa::new(TEST_UZI_CA_CN).unwrap();
    let (ca_pem, other_pem) = (ca.cert_pem(), bundle_only.cert_pem());
    let server = TestServer::start_with(move |config| {
        let certs = config.tls.client_ca.parent().unwrap().to_path_buf();
        let ours = std::fs::read_to_string(&config.tls.client_ca).unwrap();
        std::fs::write(
            certs.join("bundle.pem"),
            format!("{ours}{ca_pem}{other_pem}"),
        )
        .unwrap();
        std::fs::write(certs.join("uzi-ca.pem"), &ca_pem).unwrap();
        config.tls.client_ca = certs.join("bundle.pem");
        config.tls.uzi_server_ca = Some(certs.join("uzi-ca.pem"));
        for (id, ura, identity_policy) in [
            ("his-u", URA_U, IdentityPolicy::Ura),
            ("his-p", URA_P, IdentityPolicy::Pinned),
        ] {
            config.suppliers.push(SeedSupplier {
                id: id.into(),
                name: format!("{id} (test)"),
                contact: String::new(),
                ura: Some(ura.into()),
                identity_policy,
            });
        }
    })
    .await;
    Uzi {
        server,
        ca,
        bundle_only,
    }
}

/// Writes a certificate of `ca` as `certs/{name}.pem/.key`: (client files, PEM, fingerprint).
fn cert(
    server: &TestServer,
    ca: &UziTestCa,
    name: &str,
    opts: &UziCertOptions,
) -> (ClientFiles, String, String) {
    let (pem, key) = ca.client_cert(opts).unwrap();
    let dir = server.certs();
    let (cert_path, key_path): (PathBuf, PathBuf) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, &pem).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let der = schakel::tls::load_certs(&cert_path).unwrap();
    let fingerprint = schakel::tls::fingerprint(der[0].as_ref());
    let mut files = server.files(SUPPLIER_A);
    files.identity = Some((cert_path, key_path));
    (files, pem, fingerprint)
}

async fn submit(server: &TestServer, files: &ClientFiles, id: &str) -> Result<u32, tonic::Status> {
    let channel = schakel::client::connect(&server.url(), files)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
    IntakeClient::new(channel)
        .submit_batch(batch(id, vec![record(id)]))
        .await
        .map(|r| r.into_inner().accepted)
}

fn assert_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, ours: &str) {
    let status = result.expect_err("must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(code_of(&status), ours, "{status:?}");
}

async fn admin(server: &TestServer) -> AdminClient<Channel> {
    AdminClient::new(server.channel(ADMIN).await)
}

async fn certs_of(server: &TestServer, supplier: &str) -> Vec<CertificateInfo> {
    admin(server)
        .await
        .list_certificates(ListCertificatesRequest {
            supplier_id: supplier.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .certificates
}

async fn first_uses(server: &TestServer) -> Vec<AuditEntry> {
    admin(server)
        .await
        .query_audit(QueryAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .filter(|e| e.action == "identity.ura_first_use")
        .collect()
}

#[tokio::test]
async fn a_renewed_certificate_with_the_same_ura_is_accepted_under_ura_and_refused_under_pinned_until_registered(
) {
    let uzi = start().await;
    let server = &uzi.server;
    // Under `ura`: the current certificate (RSA 4096, as the register issues)
    // and its renewal (another key, ECDSA) both work without an admin.
    let rsa = UziCertOptions {
        rsa: true,
        ..UziCertOptions::server(URA_U)
    };
    let (old, _, old_fp) = cert(server, &uzi.ca, "u-2026", &rsa);
    assert_eq!(submit(server, &old, "u-1").await.unwrap(), 1);
    assert_eq!(submit(server, &old, "u-2").await.unwrap(), 1);
    let (renewed, _, new_fp) = cert(server, &uzi.ca, "u-2027", &UziCertOptions::server(URA_U));
    assert_eq!(submit(server, &renewed, "u-3").await.unwrap(), 1);
    // Both appear in `certs list` as the supplier's, registered by first use.
    let listed = certs_of(server, "his-u").await;
    let mut seen: Vec<_> = listed
        .iter()
        .map(|c| {
            (
                c.fingerprint.clone(),
                c.origin.clone(),
                c.status.clone(),
                c.role.clone(),
            )
        })
        .collect();
    seen.sort();
    let mut expected = vec![
        (
            old_fp.clone(),
            "ura".to_owned(),
            "active".to_owned(),
            "supplier".to_owned(),
        ),
        (
            new_fp.clone(),
            "ura".to_owned(),
            "active".to_owned(),
            "supplier".to_owned(),
        ),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    // One audit event per certificate (the second call of `old` added none),
    // with serial and fingerprint.
    let events = first_uses(server).await;
    assert_eq!(events.len(), 2, "{events:?}");
    for (event, fp) in events.iter().zip([&old_fp, &new_fp]) {
        let serial = &listed.iter().find(|c| &c.fingerprint == fp).unwrap().serial;
        assert_eq!(&event.actor_fingerprint, fp);
        assert_eq!(event.outcome, "ok");
        assert!(
            event.detail.contains(&format!("serial={serial} ")),
            "{}",
            event.detail
        );
        assert!(
            event.detail.contains(&format!("fingerprint={fp}")),
            "{}",
            event.detail
        );
        assert!(
            event.detail.contains("supplier=his-u ura=90000011"),
            "{}",
            event.detail
        );
    }

    // Under `pinned` (his-p): the same kind of certificate is refused until an
    // admin registers it, then accepted.
    let (pinned, pem, fp) = cert(server, &uzi.ca, "p-2027", &UziCertOptions::server(URA_P));
    assert_refused(
        submit(server, &pinned, "p-1").await,
        Code::Unauthenticated,
        "CERTIFICATE_NOT_REGISTERED",
    );
    let added = admin(server)
        .await
        .add_certificate(AddCertificateRequest {
            pem,
            role: "supplier".into(),
            name: "his-p 2027".into(),
            supplier_id: "his-p".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (added.fingerprint.as_str(), added.origin.as_str()),
        (fp.as_str(), "pinned")
    );
    assert_eq!(submit(server, &pinned, "p-1").await.unwrap(), 1);
    assert_eq!(first_uses(server).await.len(), 2);
}

#[tokio::test]
async fn revoke_and_retire_work_per_certificate_and_suspend_per_supplier_under_ura() {
    let uzi = start().await;
    let server = &uzi.server;
    let (one, _, one_fp) = cert(server, &uzi.ca, "u-one", &UziCertOptions::server(URA_U));
    let (two, _, two_fp) = cert(server, &uzi.ca, "u-two", &UziCertOptions::server(URA_U));
    assert_eq!(submit(server, &one, "a").await.unwrap(), 1);
    assert_eq!(submit(server, &two, "b").await.unwrap(), 1);
    let mut admin = admin(server).await;
    admin
        .revoke_certificate(CertificateRef {
            fingerprint: one_fp.clone(),
        })
        .await
        .unwrap();
    // Revoked stays revoked: the policy does not register it again.
    for id in ["c", "d"] {
        assert_refused(
            submit(server, &one, id).await,
            Code::Unauthenticated,
            "CERTIFICATE_REVOKED",
        );
    }
    assert_eq!(submit(server, &two, "e").await.unwrap(), 1);
    admin
        .suspend_supplier(SupplierRef { id: "his-u".into() })
        .await
        .unwrap();
    assert_refused(
        submit(server, &two, "f").await,
        Code::PermissionDenied,
        "SUPPLIER_SUSPENDED",
    );
    // A certificate first seen while suspended is refused as suspended too.
    let (three, _, _) = cert(server, &uzi.ca, "u-three", &UziCertOptions::server(URA_U));
    assert_refused(
        submit(server, &three, "g").await,
        Code::PermissionDenied,
        "SUPPLIER_SUSPENDED",
    );
    admin
        .resume_supplier(SupplierRef { id: "his-u".into() })
        .await
        .unwrap();
    assert_eq!(submit(server, &two, "h").await.unwrap(), 1);
    admin
        .retire_certificate(RetireCertificateRequest {
            fingerprint: two_fp.clone(),
            at: humantime::format_rfc3339(std::time::SystemTime::now()).to_string(),
        })
        .await
        .unwrap();
    assert_refused(
        submit(server, &two, "i").await,
        Code::Unauthenticated,
        "CERTIFICATE_RETIRED",
    );
    let statuses: std::collections::BTreeMap<_, _> = certs_of(server, "his-u")
        .await
        .into_iter()
        .map(|c| (c.fingerprint, c.status))
        .collect();
    assert_eq!(statuses.get(&one_fp).map(String::as_str), Some("revoked"));
    assert_eq!(statuses.get(&two_fp).map(String::as_str), Some("retired"));
    assert_eq!(statuses.len(), 3);
}

#[tokio::test]
async fn another_ura_is_refused_with_its_code_and_audited() {
    let uzi = start().await;
    let server = &uzi.server;
    let (files, _, fp) = cert(server, &uzi.ca, "x", &UziCertOptions::server("90000099"));
    assert_refused(
        submit(server, &files, "x").await,
        Code::Unauthenticated,
        "URA_NOT_REGISTERED",
    );
    let refused: Vec<_> = admin(server)
        .await
        .query_audit(QueryAuditRequest {
            actor_fingerprint: fp,
            ..QueryAuditRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|e| (e.action, e.outcome))
        .collect();
    assert_eq!(
        refused,
        [("access_refused".to_owned(), "URA_NOT_REGISTERED".to_owned())]
    );
    assert!(certs_of(server, "")
        .await
        .iter()
        .all(|c| c.origin == "pinned"));
}

#[tokio::test]
async fn a_persons_card_is_refused_for_a_system_role() {
    let uzi = start().await;
    let server = &uzi.server;
    for (name, card) in [
        ("zorgverlener", 'Z'),
        ("medewerker", 'N'),
        ("onbenoemd", 'M'),
    ] {
        let opts = UziCertOptions {
            card_type: card,
            ..UziCertOptions::server(URA_U)
        };
        let (files, _, _) = cert(server, &uzi.ca, name, &opts);
        assert_refused(
            submit(server, &files, name).await,
            Code::PermissionDenied,
            "UZI_NOT_SERVER_CARD",
        );
        let channel = schakel::client::connect(&server.url(), &files)
            .await
            .unwrap();
        assert_refused(
            RegistryClient::new(channel)
                .pull(pull_request(1, 0, 1000))
                .await,
            Code::PermissionDenied,
            "UZI_NOT_SERVER_CARD",
        );
    }
    assert!(first_uses(server).await.is_empty());
}

#[tokio::test]
async fn the_registry_and_admins_stay_pinned() {
    let uzi = start().await;
    let server = &uzi.server;
    let (files, _, _) = cert(server, &uzi.ca, "u", &UziCertOptions::server(URA_U));
    let channel = schakel::client::connect(&server.url(), &files)
        .await
        .unwrap();
    assert_refused(
        RegistryClient::new(channel.clone())
            .pull(pull_request(1, 0, 1000))
            .await,
        Code::PermissionDenied,
        "WRONG_ROLE",
    );
    assert_refused(
        AdminClient::new(channel)
            .list_suppliers(ListSuppliersRequest {})
            .await,
        Code::PermissionDenied,
        "WRONG_ROLE",
    );
    // What it was registered as: a supplier identity, nothing else.
    let listed = certs_of(server, "his-u").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].role.as_str(), listed[0].origin.as_str()),
        ("supplier", "ura")
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_with_the_right_ura_is_refused() {
    let uzi = start().await;
    let server = &uzi.server;
    // A CA outside the client CA bundle, with the very name of the UZI CA:
    // the handshake fails (the signature does not verify: decrypt_error).
    let rogue = UziTestCa::new(TEST_UZI_CA_CN).unwrap();
    let (files, _, _) = cert(server, &rogue, "rogue", &UziCertOptions::server(URA_U));
    let status = submit(server, &files, "r").await.expect_err("refused");
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(
        chain(&status).contains("DecryptError"),
        "{}",
        chain(&status)
    );
    // A CA in the bundle that is not the configured UZI server CA, though it
    // has its name: the handshake passes, but for `ura` the certificate is
    // nobody's (the gateway checks the issuer's signature, not only its name).
    let (files, _, _) = cert(
        server,
        &uzi.bundle_only,
        "other",
        &UziCertOptions::server(URA_U),
    );
    assert_refused(
        submit(server, &files, "o").await,
        Code::Unauthenticated,
        "CERTIFICATE_NOT_REGISTERED",
    );
    assert!(certs_of(server, "his-u").await.is_empty());
}

#[tokio::test]
async fn malformed_uzi_values_are_refused_with_a_code() {
    let uzi = start().await;
    let server = &uzi.server;
    let cases = [
        (
            "bad-ura",
            UziCertOptions {
                raw_uzi_string: Some(format!(
                    "{}-1-12345678-S-9000001-00.000-00000000",
                    schakel::uzi::dev::TEST_UZI_CA_OID
                )),
                permanent_identifier: None,
                ..UziCertOptions::server(URA_U)
            },
            "UZI_MALFORMED",
        ),
        (
            "six-parts",
            UziCertOptions {
                raw_uzi_string: Some("2.999.1-1-12345678-S-90000011-00.000".into()),
                permanent_identifier: None,
                ..UziCertOptions::server(URA_U)
            },
            "UZI_MALFORMED",
        ),
        (
            "card-x",
            UziCertOptions {
                card_type: 'X',
                ..UziCertOptions::server(URA_U)
            },
            "UZI_MALFORMED",
        ),
        (
            "two-uras",
            UziCertOptions {
                permanent_identifier: Some(URA_P.into()),
                ..UziCertOptions::server(URA_U)
            },
            "UZI_MALFORMED",
        ),
        (
            "no-uzi",
            UziCertOptions {
                without_uzi_name: true,
                permanent_identifier: None,
                ..UziCertOptions::server(URA_U)
            },
            "UZI_MISSING",
        ),
    ];
    for (name, opts, code) in cases {
        let (files, _, _) = cert(server, &uzi.ca, name, &opts);
        let status = submit(server, &files, name).await.expect_err(name);
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
        assert_eq!(code_of(&status), code, "{name}: {status:?}");
    }
    assert!(certs_of(server, "his-u").await.is_empty());
    // The gateway still serves a good one.
    let (good, _, _) = cert(server, &uzi.ca, "good", &UziCertOptions::server(URA_U));
    assert_eq!(submit(server, &good, "good").await.unwrap(), 1);
}

#[tokio::test]
async fn suppliers_add_takes_a_ura_and_its_certificates_work_at_once() {
    let uzi = start().await;
    let server = &uzi.server;
    let mut admin = admin(server).await;
    let add = |id: &str, ura: &str, policy: &str| AddSupplierRequest {
        id: id.into(),
        name: format!("{id} name"),
        contact: String::new(),
        ura: ura.into(),
        identity_policy: policy.into(),
    };
    let added = admin
        .add_supplier(add("his-new", "90000013", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (added.ura.as_str(), added.identity_policy.as_str()),
        ("90000013", "ura")
    );
    let plain = admin
        .add_supplier(add("his-plain", "", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (plain.ura.as_str(), plain.identity_policy.as_str()),
        ("", "pinned")
    );
    assert_refused(
        admin.add_supplier(add("his-bad", "9000001", "")).await,
        Code::InvalidArgument,
        "URA_FORMAT",
    );
    assert_refused(
        admin.add_supplier(add("his-dup", URA_U, "")).await,
        Code::AlreadyExists,
        "URA_EXISTS",
    );
    assert_refused(
        admin.add_supplier(add("his-none", "", "ura")).await,
        Code::InvalidArgument,
        "URA_MISSING",
    );
    assert_refused(
        admin
            .add_supplier(add("his-what", "90000014", "fingerprint"))
            .await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    let (files, _, _) = cert(server, &uzi.ca, "new", &UziCertOptions::server("90000013"));
    assert_eq!(submit(server, &files, "n").await.unwrap(), 1);
    assert_eq!(certs_of(server, "his-new").await.len(), 1);
}

#[test]
fn certs_dev_uzi_writes_test_certificates_that_admin_certs_inspect_shows_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_schakel"))
        .args(["certs", "dev", "--uzi", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("TEST-ONLY"));
    let ca = std::fs::read_to_string(dir.path().join("uzi-ca.pem")).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    let ecdsa = schakel::tls::load_certs(&dir.path().join("uzi-server-ecdsa.pem")).unwrap();
    assert_eq!(
        schakel::tls::describe(&ecdsa[0]).unwrap().key_type,
        "ECDSA P-256"
    );
    let file = dir.path().join("uzi-server-rsa.pem");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_schakel"))
        // No server runs: inspect must not connect.
        .args([
            "admin",
            "--server",
            "https://127.0.0.1:1",
            "--json",
            "certs",
            "inspect",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["key_type"], "RSA 4096");
    assert!(shown["issuer"].as_str().unwrap().contains(TEST_UZI_CA_CN));
    assert_eq!(shown["uzi"]["ura"], schakel::uzi::dev::DEV_URA_A);
    assert_eq!(shown["uzi"]["card_type"], "S (server certificate)");
    assert_eq!(shown["uzi"]["ca_oid"], schakel::uzi::dev::TEST_UZI_CA_OID);
    assert_eq!(shown["uzi"]["role"], "00.000");
    assert_eq!(
        shown["uzi"]["permanent_identifier"],
        schakel::uzi::dev::DEV_URA_A
    );
    assert_eq!(shown["uzi_error"], serde_json::Value::Null);
    // A certificate without UZI values says so with the code.
    let plain = schakel::tls::dev::TestCa::new("plain").unwrap();
    let (pem, _) = plain
        .client_cert("plain", &schakel::tls::dev::ClientCertOptions::default())
        .unwrap();
    let file = dir.path().join("plain.pem");
    std::fs::write(&file, pem).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_schakel"))
        .args(["admin", "certs", "inspect"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("UZI_MISSING"), "{text}");
}
