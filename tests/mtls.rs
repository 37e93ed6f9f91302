//! Mutual TLS at the gateway's door: only certificates from the client CA get in.

mod common;

use common::*;
use schakel::client::ClientFiles;
use schakel::proto::intake_client::IntakeClient;
use schakel::tls::dev::{ClientCertOptions, TestCa};
use tonic::Code;

/// Calls SubmitBatch over a connection made with `files`; the handshake
/// failure shows either at connect or at the first call.
async fn call_with(server: &TestServer, files: &ClientFiles) -> tonic::Status {
    match schakel::client::connect(&server.url(), files).await {
        Err(e) => tonic::Status::unavailable(e.to_string()),
        Ok(channel) => IntakeClient::new(channel)
            .submit_batch(batch("b", vec![record("m")]))
            .await
            .expect_err("the call must fail"),
    }
}

#[tokio::test]
async fn no_client_certificate_fails_the_handshake() {
    let server = TestServer::start().await;
    let mut files = server.files(SUPPLIER_A);
    files.identity = None;
    let status = call_with(&server, &files).await;
    // TLS 1.3: the client learns of the refusal on its first read, as an alert.
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(
        chain(&status).contains("CertificateRequired"),
        "{}",
        chain(&status)
    );
    // The server keeps serving everyone else.
    let ok = server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch("b", vec![record("m")]))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().accepted, 1);
}

#[tokio::test]
async fn certificate_from_another_ca_with_the_same_name_fails_the_handshake() {
    let server = TestServer::start().await;
    let rogue = TestCa::new("Schakel test CA").unwrap();
    let (cert, key) = rogue
        .client_cert(SUPPLIER_A, &ClientCertOptions::default())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.pem"), cert).unwrap();
    std::fs::write(dir.path().join("c.key"), key).unwrap();
    let mut files = server.files(SUPPLIER_A);
    files.identity = Some((dir.path().join("c.pem"), dir.path().join("c.key")));
    let status = call_with(&server, &files).await;
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    // The server could not verify the chain: rustls answers with decrypt_error.
    assert!(
        chain(&status).contains("DecryptError"),
        "{}",
        chain(&status)
    );
    let ok = server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch("b", vec![record("m")]))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().accepted, 1);
}

#[tokio::test]
async fn plaintext_http2_is_not_served() {
    let server = TestServer::start().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await;
    let status = match channel {
        Err(e) => tonic::Status::unavailable(e.to_string()),
        Ok(channel) => IntakeClient::new(channel)
            .submit_batch(batch("b", vec![record("m")]))
            .await
            .expect_err("plaintext must fail"),
    };
    // The gateway speaks only TLS: the HTTP/2 preface is not answered, the
    // connection is closed.
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(
        chain(&status).contains("broken pipe") || chain(&status).contains("connection"),
        "{}",
        chain(&status)
    );
    // And it keeps serving TLS clients.
    let ok = server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch("b", vec![record("m")]))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().accepted, 1);
}
