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

/// Issue 17, hole 6: a slow handshake must not delay anyone else. Clients that
/// connect and then stall (one silent, one halfway into a ClientHello) hold
/// their connections open well inside a long handshake timeout, and a good
/// client that comes after them is served in under a second while they are
/// still open; a one-at-a-time accept loop would make it wait for their
/// timeout. Supersedes the "others are served" part of
/// `bad_input::a_client_that_never_finishes_its_handshake_is_cut_off_while_others_are_served`,
/// whose 300 ms timeout let a serial accept loop pass too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_does_not_delay_a_good_client() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TIMEOUT: Duration = Duration::from_secs(4);
    let server =
        TestServer::start_with(|c| c.limits.handshake_timeout_ms = TIMEOUT.as_millis() as u64)
            .await;
    // Warm up (first-connection costs) so the timing below is the door's.
    assert_eq!(
        server
            .intake(SUPPLIER_A)
            .await
            .submit_batch(batch("warm", vec![record("warm")]))
            .await
            .unwrap()
            .into_inner()
            .accepted,
        1
    );
    let opened = Instant::now();
    let silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut halfway = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // A TLS handshake record header announcing 512 bytes, then 3 of them.
    halfway
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
        .await
        .unwrap();
    // Let the server take both connections into their handshakes.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let receipt = server
        .intake(SUPPLIER_B)
        .await
        .submit_batch(batch("meanwhile", vec![record("meanwhile")]))
        .await
        .unwrap()
        .into_inner();
    let took = started.elapsed();
    assert_eq!(receipt.accepted, 1);
    assert!(
        took < Duration::from_secs(1),
        "the good client waited {took:?} behind stalled handshakes"
    );
    // Both stalled clients are still connected (well inside their timeout).
    assert!(
        opened.elapsed() < TIMEOUT,
        "the machine is too slow to tell"
    );
    let mut buf = [0u8; 16];
    for stream in [&silent, &halfway] {
        match stream.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("a stalled connection was closed early: {other:?}"),
        }
    }
    // And they are cut off once the timeout has passed.
    for mut stream in [silent, halfway] {
        let n = tokio::time::timeout(TIMEOUT * 3, stream.read(&mut buf))
            .await
            .expect("closed after the handshake timeout");
        assert!(matches!(n, Ok(0) | Err(_)), "closed without data: {n:?}");
    }
}
