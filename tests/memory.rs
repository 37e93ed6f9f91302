//! One request costs bounded memory: a batch is measured on the wire before it
//! is decoded, the bytes of requests being received and decoded at once are
//! budgeted across all connections, and a connection may open only so many
//! HTTP/2 streams. Against the real gateway: the `schakel serve` binary as a
//! child process where its peak RSS matters, an in-process one otherwise.

mod common;

use std::time::Duration;

use common::process::ChildGateway;
use common::raw::call_raw;
use common::*;
use prost::Message;
use tonic::Code;

async fn submit_raw(
    channel: tonic::transport::Channel,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    call_raw(channel, "/schakel.v1.Intake/SubmitBatch", body).await
}

/// A channel to the child gateway as `name`, once it serves, without the
/// harness's 2 s per-call timeout: a debug build moves 32 MiB through TLS
/// slowly.
async fn patient_channel(gateway: &ChildGateway, name: &str) -> tonic::transport::Channel {
    drop(gateway.channel(name, Duration::from_secs(30)).await);
    schakel::client::endpoint(&gateway.url(), &gateway.files(name))
        .expect("endpoint")
        .timeout(Duration::from_secs(300))
        .connect()
        .await
        .expect("connect")
}

/// Peak resident set size of process `pid` in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
}

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_millions_of_empty_records_is_refused_in_bounded_memory() {
    let gateway = ChildGateway::start(&[]);
    let channel = patient_channel(&gateway, "supplier-a").await;
    let other = patient_channel(&gateway, "supplier-b").await;
    let before = peak_rss(gateway.pid());

    // Just under the 32 MiB request limit: 16 M empty records, no header.
    let request = 32 * MIB as usize - 2;
    let no_header = [0x12u8, 0x00].repeat(request / 2);
    let started = std::time::Instant::now();
    let missing = submit_raw(channel.clone(), no_header).await.unwrap_err();
    let took = started.elapsed();

    // The same behind a complete header that counts them: too many records.
    let mut with_header = schakel::proto::Batch {
        header: Some(schakel::proto::BatchHeader {
            batch_id: "b".into(),
            source_system: "s".into(),
            record_count: 16_000_000,
            ..Default::default()
        }),
        records: Vec::new(),
    }
    .encode_to_vec();
    with_header.extend([0x12u8, 0x00].repeat(8_000_000).repeat(2));
    let too_many = submit_raw(channel.clone(), with_header).await.unwrap_err();

    // Two at once, from two suppliers: each costs its own size, not gigabytes.
    let (one, two) = tokio::join!(
        submit_raw(channel.clone(), [0x12u8, 0x00].repeat(request / 2)),
        submit_raw(other, [0x12u8, 0x00].repeat(request / 2)),
    );

    let after = peak_rss(gateway.pid());
    eprintln!(
        "gateway peak RSS: {:.1} MB before, {:.1} MB after requests of up to {:.1} MB; the first answered in {:.2} s",
        before as f64 / 1e6,
        after as f64 / 1e6,
        request as f64 / 1e6,
        took.as_secs_f64()
    );
    assert_eq!(missing.code(), Code::InvalidArgument, "{missing:?}");
    assert_eq!(code_of(&missing), "HEADER_MISSING");
    assert_eq!(too_many.code(), Code::InvalidArgument, "{too_many:?}");
    assert_eq!(code_of(&too_many), "TOO_MANY_RECORDS");
    for status in [one.unwrap_err(), two.unwrap_err()] {
        assert_eq!(code_of(&status), "HEADER_MISSING", "{status:?}");
    }
    assert!(
        after <= before + 4 * request as u64,
        "peak RSS grew from {before} to {after} bytes for a {request}-byte request"
    );

    // And it keeps serving.
    let receipt = schakel::proto::intake_client::IntakeClient::new(channel)
        .submit_batch(batch("after", vec![record("after-1")]))
        .await
        .expect("still serving")
        .into_inner();
    assert_eq!(receipt.accepted, 1);
}

/// A request body fed frame by frame from the test.
struct FedBody(tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl http_body::Body for FedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        self.0
            .poll_recv(cx)
            .map(|data| data.map(|d| Ok(http_body::Frame::data(d))))
    }
}

/// Starts a SubmitBatch whose body the test sends piece by piece; the
/// answer's HTTP status and gRPC status header or trailer come from the task.
fn open_submit(
    mut channel: tonic::transport::Channel,
) -> (
    tokio::sync::mpsc::Sender<bytes::Bytes>,
    tokio::task::JoinHandle<Result<http::Response<tonic::body::Body>, tonic::transport::Error>>,
) {
    use tower_service::Service;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let request = http::Request::builder()
        .method("POST")
        .uri("https://localhost/schakel.v1.Intake/SubmitBatch")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(FedBody(rx)))
        .expect("request");
    let answer = tokio::spawn(async move {
        std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
        channel.call(request).await
    });
    (tx, answer)
}

#[tokio::test]
async fn the_bytes_of_requests_being_received_at_once_are_budgeted_across_connections() {
    const KIB: usize = 1024;
    let server = TestServer::start_with(|c| {
        c.limits.max_request_bytes = 1024 * KIB;
        c.limits.max_decoding_bytes = Some(1536 * KIB);
    })
    .await;

    // Supplier A starts a 1 MiB request and sends 900 KiB of it, then waits.
    // Supplier B's 700 KiB request, on its own connection, does not fit next
    // to those 900 KiB: once they have arrived it is refused with a retry hint.
    // If B's bytes got in first, A is the one refused (the budget is first
    // come, first served): then A starts again.
    let other = server.channel(SUPPLIER_B).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (tx, first, refused) = 'scenario: loop {
        let (tx, first) = open_submit(server.channel(SUPPLIER_A).await);
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(1024 * KIB as u32).to_be_bytes());
        tx.send(frame.into()).await.expect("send prefix");
        for _ in 0..9 {
            tx.send(vec![0u8; 100 * KIB].into())
                .await
                .expect("send part");
        }
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the budget never filled up"
            );
            let status = submit_raw(other.clone(), vec![0u8; 700 * KIB])
                .await
                .expect_err("700 KiB of zeros is no batch");
            if code_of(&status) == "DECODE_BUDGET_EXHAUSTED" {
                break 'scenario (tx, first, status);
            }
            // Refused for its content instead: the first request's bytes are
            // not all there yet, or the first request was refused itself.
            assert_eq!(code_of(&status), "MALFORMED_MESSAGE", "{status:?}");
            if first.is_finished() {
                continue 'scenario;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        refused
            .metadata()
            .get("grpc-retry-pushback-ms")
            .and_then(|v| v.to_str().ok()),
        Some("200")
    );
    // A small request still fits next to the 900 KiB.
    let receipt = server
        .intake(SUPPLIER_B)
        .await
        .submit_batch(batch("small", vec![record("small-1")]))
        .await
        .expect("a small batch fits")
        .into_inner();
    assert_eq!(receipt.accepted, 1);

    // The first request ends cut short; once it is answered its bytes are
    // given back and the 700 KiB fit.
    drop(tx);
    let answer = tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .expect("the cut-short request is answered")
        .expect("task")
        .expect("an HTTP answer");
    assert_eq!(answer.status(), http::StatusCode::OK);
    let status = submit_raw(other, vec![0u8; 700 * KIB])
        .await
        .expect_err("700 KiB of zeros is no batch");
    assert_eq!(code_of(&status), "MALFORMED_MESSAGE", "{status:?}");
}

/// An HTTP/2 connection over mutual TLS to `server` as `name`, without tonic.
async fn raw_h2(server: &TestServer, name: &str) -> h2::client::SendRequest<bytes::Bytes> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let files = server.files(name);
    let (cert, key) = files.identity.clone().expect("identity");
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.ca).expect("ca") {
        roots.add(ca.expect("ca cert")).expect("add ca");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .expect("cert")
        .map(|c| c.expect("cert"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(&key).expect("key");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS");
    let (send, connection) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

#[tokio::test]
async fn a_connection_may_open_only_so_many_streams_at_once() {
    let server =
        TestServer::start_with(|c| c.limits.max_concurrent_streams_per_connection = 7).await;
    let mut send = raw_h2(&server, SUPPLIER_A)
        .await
        .ready()
        .await
        .expect("ready");
    // One full round trip, so the server's SETTINGS have been read.
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "https://localhost:{}/grpc.health.v1.Health/Check",
            server.addr.port()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (answer, mut body) = send.send_request(request, false).expect("send");
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("body");
    let answer = answer.await.expect("answer");
    assert_eq!(answer.status(), http::StatusCode::OK);
    assert_eq!(send.current_max_send_streams(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_of_millions_of_empty_tokens_is_refused_in_bounded_memory() {
    let gateway = ChildGateway::start(&[]);
    let channel = patient_channel(&gateway, "registry").await;
    let before = peak_rss(gateway.pid());
    let request = 32 * MIB as usize - 2;
    let tokens = [0x0au8, 0x00].repeat(request / 2);
    let (ack, release) = tokio::join!(
        call_raw(channel.clone(), "/schakel.v1.Registry/Ack", tokens.clone()),
        call_raw(channel.clone(), "/schakel.v1.Registry/Release", tokens),
    );
    let after = peak_rss(gateway.pid());
    eprintln!(
        "gateway peak RSS: {:.1} MB before, {:.1} MB after an Ack and a Release of {:.1} MB each",
        before as f64 / 1e6,
        after as f64 / 1e6,
        request as f64 / 1e6,
    );
    for status in [ack.unwrap_err(), release.unwrap_err()] {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(code_of(&status), "INVALID_REQUEST");
    }
    assert!(
        after <= before + 4 * request as u64,
        "peak RSS grew from {before} to {after} bytes for two {request}-byte requests"
    );
}

#[tokio::test]
async fn the_record_limit_before_decoding_is_the_configured_one() {
    let server = TestServer::start_with(|c| c.limits.max_records_per_batch = 3).await;
    let mut intake = server.intake(SUPPLIER_A).await;
    // Four records behind a header that would fail its own check: the count
    // is refused first, before the batch is decoded.
    let mut four = batch(
        "four",
        (0..4).map(|i| record(&format!("four-{i}"))).collect(),
    );
    if let Some(h) = four.header.as_mut() {
        h.source_system.clear();
    }
    let status = intake.submit_batch(four).await.expect_err("too many");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(code_of(&status), "TOO_MANY_RECORDS");
    // Three are fine.
    let receipt = intake
        .submit_batch(batch(
            "three",
            (0..3).map(|i| record(&format!("three-{i}"))).collect(),
        ))
        .await
        .expect("three records")
        .into_inner();
    assert_eq!(receipt.accepted, 3);
}
