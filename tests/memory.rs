//! One request costs bounded memory: a batch is measured on the wire before it
//! is decoded, the bytes of requests being received and decoded at once are
//! budgeted across all connections, and a connection may open only so many
//! HTTP/2 streams. Against the real gateway: the `schakel serve` binary as a
//! child process where its peak RSS matters, an in-process one otherwise.

mod common;

use std::time::Duration;

use bytes::{Buf, BufMut};
use common::process::ChildGateway;
use common::*;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Code;

/// A codec that sends raw bytes as the gRPC message.
#[derive(Clone, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = src.chunk().to_vec();
        src.advance(bytes.len());
        Ok(Some(bytes))
    }
}

async fn submit_raw(
    channel: tonic::transport::Channel,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static("/schakel.v1.Intake/SubmitBatch");
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
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
    // Wait until it serves, then use a channel without the harness's 2 s
    // per-call timeout: a debug build moves 32 MiB through TLS slowly.
    drop(gateway.channel("supplier-a", Duration::from_secs(30)).await);
    let channel = schakel::client::endpoint(&gateway.url(), &gateway.files("supplier-a"))
        .expect("endpoint")
        .timeout(Duration::from_secs(300))
        .connect()
        .await
        .expect("connect");
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
