//! Bad input at every layer gets a clear, specific answer; the server never
//! panics and keeps serving everyone else.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use schakel::proto::intake_client::IntakeClient;
use schakel::tls::dev::ClientCertOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

async fn submit_raw(server: &TestServer, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    raw::call_raw(
        server.channel(SUPPLIER_A).await,
        "/schakel.v1.Intake/SubmitBatch",
        body,
    )
    .await
}

async fn still_serving(server: &TestServer) {
    let receipt = server
        .intake(SUPPLIER_B)
        .await
        .submit_batch(batch(
            "alive",
            vec![record(&format!("alive-{}", rand::random::<u64>()))],
        ))
        .await
        .expect("the server keeps serving")
        .into_inner();
    assert_eq!(receipt.accepted, 1);
}

#[tokio::test]
async fn malformed_protobuf_is_invalid_argument() {
    let server = TestServer::start().await;
    // Field 1 (header), wire type 2, with a length far past the end.
    let status = submit_raw(&server, vec![0x0a, 0xff, 0xff, 0x03, 0x01])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(code_of(&status), "MALFORMED_MESSAGE");
    // A string field holding invalid UTF-8: header.batch_id = 0xff 0xfe.
    let status = submit_raw(&server, vec![0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(code_of(&status), "MALFORMED_MESSAGE");
    still_serving(&server).await;
}

#[tokio::test]
async fn garbage_bytes_on_the_tls_port_are_dropped() {
    let server = TestServer::start().await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&[0u8, 1, 2, 3, 0xff, 0xfe, b'G', b'E', b'T', b' ', b'/'].repeat(100))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    // The server answers with at most a TLS alert, then closes.
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut total = 0;
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    })
    .await
    .expect("the connection is closed");
    assert!(
        read <= 7,
        "no more than an alert record comes back, got {read} bytes"
    );
    still_serving(&server).await;
}

#[tokio::test]
async fn expired_and_not_yet_valid_client_certificates_fail_the_handshake() {
    let server = TestServer::start().await;
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let cases = [
        (
            "expired",
            "CertificateExpired",
            ClientCertOptions {
                not_before: Some(now - day * 30),
                not_after: Some(now - day),
                ..Default::default()
            },
        ),
        (
            "not yet valid",
            "CertificateExpired",
            ClientCertOptions {
                not_before: Some(now + day),
                not_after: Some(now + day * 30),
                ..Default::default()
            },
        ),
    ];
    for (what, alert, options) in cases {
        let (cert, key) = server.ca.client_cert(SUPPLIER_A, &options).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.pem"), cert).unwrap();
        std::fs::write(dir.path().join("c.key"), key).unwrap();
        let mut files = server.files(SUPPLIER_A);
        files.identity = Some((dir.path().join("c.pem"), dir.path().join("c.key")));
        let channel = schakel::client::connect(&server.url(), &files)
            .await
            .expect("TLS 1.3 reports late");
        let status = IntakeClient::new(channel)
            .submit_batch(batch("b", vec![record("m")]))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::Unknown, "{what}: {status:?}");
        assert!(chain(&status).contains(alert), "{what}: {}", chain(&status));
    }
    still_serving(&server).await;
}

#[tokio::test]
async fn hostile_strings_get_field_errors_without_echo() {
    let server = TestServer::start().await;
    let mut control = record("control");
    control.patient.as_mut().unwrap().given_names = "Jan\u{0007}\u{001b}[2J".into();
    let mut megabytes = record("megabytes");
    megabytes.patient.as_mut().unwrap().family_name = "Ω".repeat(2 * 1024 * 1024);
    let mut bidi = record("bidi-name");
    bidi.patient.as_mut().unwrap().family_name = "مُحَمَّد".into();
    let receipt = server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch("hostile", vec![control, megabytes, bidi]))
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<(u32, Vec<&str>)> = receipt
        .results
        .iter()
        .map(|r| {
            (
                r.index,
                r.findings.iter().map(|f| f.code.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        vec![(0, vec!["INVALID_CHARACTERS"]), (1, vec!["NAME_TOO_LONG"])]
    );
    assert_eq!(receipt.accepted, 1, "an Arabic name is a name");
    let text = format!("{receipt:?}");
    assert!(
        !text.contains("ΩΩ") && !text.contains('\u{0007}'),
        "values are never echoed"
    );
    still_serving(&server).await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_cut_off_while_others_are_served() {
    let server = TestServer::start_with(|c| c.limits.handshake_timeout_ms = 300).await;
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Others are served while the silent client holds its connection open.
    still_serving(&server).await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the server closes the silent connection after its handshake timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "closed without data: {n:?}");
}
