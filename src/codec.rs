//! The protobuf codec of every generated service and client: prost encoding,
//! but a message that does not decode is the caller's fault, so it becomes
//! INVALID_ARGUMENT with the stable code `MALFORMED_MESSAGE` (tonic's own codec
//! answers INTERNAL, which tells a vendor to wait for us instead of fixing
//! their encoder). The status message names the field path prost reports,
//! never a value.
//!
//! Before a `Batch` is decoded its wire bytes are walked once, without
//! allocating ([`scan_batch`]): a batch without a header, with more records
//! than `limits.max_records_per_batch`, or with broken top-level framing is
//! refused before prost builds a single record. An `AckRequest` or
//! `ReleaseRequest` with more lease tokens than the registry takes per call
//! is refused the same way. (An empty record is 2 bytes on
//! the wire and hundreds in memory: decoding 32 MiB of them costs gigabytes.)
//! The record limit comes from [`DecodeLimits`], which the server sets per
//! request with [`scope`] (`service::limits::DecodeLimitsLayer`); outside a
//! scope (a client decoding an answer) the embedded default applies.
//!
//! Must not: log or echo message content, do I/O.
//! Wired in by `build.rs` (`codec_path`); nothing else calls the codec itself.

use std::any::TypeId;
use std::future::Future;
use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::error::ServiceError;
use crate::schema::{BatchProblem, Code};

/// The per-request limits the decoder enforces before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Records in one `Batch` (`limits.max_records_per_batch`).
    pub max_records_per_batch: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_records_per_batch: crate::config::Limits::default().max_records_per_batch,
        }
    }
}

impl DecodeLimits {
    /// The decode limits of `limits`.
    pub fn of(limits: &crate::config::Limits) -> Self {
        DecodeLimits {
            max_records_per_batch: limits.max_records_per_batch,
        }
    }
}

tokio::task_local! {
    static DECODE_LIMITS: DecodeLimits;
}

/// Runs `future` (a request's service future) with `limits` in force for every
/// message the codec decodes while it runs.
pub fn scope<F: Future>(
    limits: DecodeLimits,
    future: F,
) -> tokio::task::futures::TaskLocalFuture<DecodeLimits, F> {
    DECODE_LIMITS.scope(limits, future)
}

fn current_limits() -> DecodeLimits {
    DECODE_LIMITS.try_with(|l| *l).unwrap_or_default()
}

/// prost encoding with strict error classification.
#[derive(Debug, Clone, Copy)]
pub struct StrictProstCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictProstCodec<T, U> {
    fn default() -> Self {
        StrictProstCodec(PhantomData)
    }
}

impl<T, U> Codec for StrictProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = StrictEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        StrictEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

/// Encodes with prost.
#[derive(Debug)]
pub struct StrictEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for StrictEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| ServiceError::Internal(format!("encoding a message: {e}")).into())
    }
}

/// Decodes with prost; a decode error is the sender's.
#[derive(Debug)]
pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: Message + Default + 'static> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        pre_check::<U>(src)?;
        U::decode(src)
            .map(Some)
            .map_err(|e| ServiceError::Malformed(e.to_string()).into())
    }
}

/// The check a message type gets before it is decoded: the requests whose
/// element count is limited and whose elements cost far more in memory than on
/// the wire (an empty record or token: 2 bytes on the wire, 24 to hundreds in
/// memory). `Batch` (records), `AckRequest` and `ReleaseRequest` (lease
/// tokens); nothing for the others. (A `TypeId` test rather than a trait, so a
/// message added to the proto files needs nothing here.)
fn pre_check<U: 'static>(src: &DecodeBuf<'_>) -> Result<(), ServiceError> {
    let id = TypeId::of::<U>();
    let batch = id == TypeId::of::<crate::proto::Batch>();
    let tokens = id == TypeId::of::<crate::proto::AckRequest>()
        || id == TypeId::of::<crate::proto::ReleaseRequest>();
    if !batch && !tokens {
        return Ok(());
    }
    // `DecodeBuf` is one contiguous `BytesMut` holding the whole message, so
    // its first chunk is all of it; should that ever change, a short scan
    // would miss records, so refuse rather than guess.
    let bytes = prost::bytes::Buf::chunk(src);
    if bytes.len() != prost::bytes::Buf::remaining(src) {
        return Err(ServiceError::Internal(
            "the message to decode is not contiguous".into(),
        ));
    }
    if batch {
        check_batch_shape(bytes, current_limits().max_records_per_batch)
    } else {
        check_token_count(bytes, crate::service::registry::MAX_TOKENS_PER_CALL)
    }
}

/// Scans `bytes` as an `AckRequest` / `ReleaseRequest` (field 1: repeated
/// `lease_tokens`) and refuses more than `max_tokens` tokens as the registry
/// service would (`INVALID_REQUEST`), broken framing as prost would.
///
/// # Errors
/// As above.
pub fn check_token_count(bytes: &[u8], max_tokens: usize) -> Result<(), ServiceError> {
    let mut tokens = 0usize;
    scan_fields(bytes, |field, wire_type| match (field, wire_type) {
        (1, 2) => {
            tokens += 1;
            Ok(())
        }
        (1, _) => Err(WireError::FieldWireType("lease_tokens")),
        _ => Ok(()),
    })
    .map_err(|e| ServiceError::Malformed(e.to_string()))?;
    if tokens > max_tokens {
        return Err(ServiceError::InvalidRequest {
            field: "lease_tokens",
            message: format!("at most {max_tokens} tokens per call"),
        });
    }
    Ok(())
}

/// Scans `bytes` as a `Batch` and refuses it as prost or the header check
/// would, in the same order: broken framing (`MALFORMED_MESSAGE`), no header
/// (`HEADER_MISSING`), more than `max_records` records (`TOO_MANY_RECORDS`).
///
/// # Errors
/// As above; the messages name no value.
pub fn check_batch_shape(bytes: &[u8], max_records: usize) -> Result<(), ServiceError> {
    let shape = scan_batch(bytes).map_err(|e| ServiceError::Malformed(e.to_string()))?;
    if !shape.header {
        return Err(BatchProblem {
            code: Code::HeaderMissing,
            field: "header",
            message: "the batch has no header record".into(),
        }
        .into());
    }
    if shape.records > max_records {
        return Err(BatchProblem {
            code: Code::TooManyRecords,
            field: "records",
            message: format!(
                "the batch holds {} records; at most {} are allowed, split it",
                shape.records, max_records
            ),
        }
        .into());
    }
    Ok(())
}

/// What the top level of a `Batch` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchShape {
    /// Field 1 (`header`) occurs at least once.
    pub header: bool,
    /// Occurrences of field 2 (`records`).
    pub records: usize,
}

/// Why a message's framing is broken (what prost would refuse too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A varint runs past the end or past 10 bytes.
    #[error("invalid varint")]
    Varint,
    /// A field's key is invalid (field number 0 or above 2^29-1).
    #[error("invalid key")]
    Key,
    /// A wire type prost does not know (6, 7), or an end-group without start.
    #[error("invalid wire type {0}")]
    WireType(u8),
    /// A known field (`header`, `records`, `lease_tokens`) does not have the
    /// length-delimited wire type.
    #[error("{0}: invalid wire type")]
    FieldWireType(&'static str),
    /// A length or fixed-size value runs past the end of the message.
    #[error("buffer underflow")]
    Underflow,
    /// Groups nested deeper than prost's recursion limit.
    #[error("recursion limit reached")]
    Recursion,
}

/// Walks the top-level fields of an encoded `Batch` (field numbers from
/// `proto/schakel/v1/schakel.proto`: 1 = header, 2 = records) without
/// allocating; unknown fields are skipped as prost skips them.
///
/// # Errors
/// The framing is broken.
pub fn scan_batch(bytes: &[u8]) -> Result<BatchShape, WireError> {
    let mut shape = BatchShape {
        header: false,
        records: 0,
    };
    scan_fields(bytes, |field, wire_type| {
        match (field, wire_type) {
            (1, 2) => shape.header = true,
            (2, 2) => shape.records += 1,
            (1, _) => return Err(WireError::FieldWireType("Batch.header")),
            (2, _) => return Err(WireError::FieldWireType("Batch.records")),
            _ => {}
        }
        Ok(())
    })?;
    Ok(shape)
}

/// Calls `on_field` with the number and wire type of every top-level field of
/// the message in `bytes`, skipping the values as prost does.
fn scan_fields(
    mut bytes: &[u8],
    mut on_field: impl FnMut(u32, u8) -> Result<(), WireError>,
) -> Result<(), WireError> {
    while !bytes.is_empty() {
        let (field, wire_type) = key(&mut bytes)?;
        on_field(field, wire_type)?;
        skip(&mut bytes, field, wire_type, 0)?;
    }
    Ok(())
}

/// prost's limit on nested messages and groups.
const RECURSION_LIMIT: u32 = 100;

fn varint(bytes: &mut &[u8]) -> Result<u64, WireError> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&b, rest) = bytes.split_first().ok_or(WireError::Varint)?;
        *bytes = rest;
        if i == 9 && b > 1 {
            return Err(WireError::Varint);
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(value);
        }
    }
    Err(WireError::Varint)
}

fn key(bytes: &mut &[u8]) -> Result<(u32, u8), WireError> {
    let key = varint(bytes)?;
    if key > u64::from(u32::MAX) {
        return Err(WireError::Key);
    }
    let wire_type = (key & 7) as u8; // < 8
    let field = (key >> 3) as u32; // key <= u32::MAX
    if field == 0 {
        return Err(WireError::Key);
    }
    Ok((field, wire_type))
}

fn advance(bytes: &mut &[u8], n: u64) -> Result<(), WireError> {
    let n = usize::try_from(n).map_err(|_| WireError::Underflow)?;
    *bytes = bytes.get(n..).ok_or(WireError::Underflow)?;
    Ok(())
}

/// Skips the value of a field whose key was just read.
fn skip(bytes: &mut &[u8], field: u32, wire_type: u8, depth: u32) -> Result<(), WireError> {
    match wire_type {
        0 => varint(bytes).map(drop),
        1 => advance(bytes, 8),
        2 => {
            let len = varint(bytes)?;
            advance(bytes, len)
        }
        3 => {
            if depth >= RECURSION_LIMIT {
                return Err(WireError::Recursion);
            }
            loop {
                if bytes.is_empty() {
                    return Err(WireError::Underflow);
                }
                let (inner, inner_type) = key(bytes)?;
                if inner_type == 4 {
                    return if inner == field {
                        Ok(())
                    } else {
                        Err(WireError::WireType(4))
                    };
                }
                skip(bytes, inner, inner_type, depth + 1)?;
            }
        }
        5 => advance(bytes, 4),
        other => Err(WireError::WireType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Batch, BatchHeader, VaccinationRecord};

    fn encoded(header: bool, records: usize) -> Vec<u8> {
        Batch {
            header: header.then(|| BatchHeader {
                batch_id: "b".into(),
                ..Default::default()
            }),
            records: (0..records)
                .map(|i| VaccinationRecord {
                    message_id: format!("m-{i}"),
                    ..Default::default()
                })
                .collect(),
        }
        .encode_to_vec()
    }

    #[test]
    fn the_scan_counts_what_prost_decodes() {
        for (header, records) in [(true, 0), (true, 3), (false, 2), (false, 0)] {
            assert_eq!(
                scan_batch(&encoded(header, records)),
                Ok(BatchShape { header, records })
            );
        }
        // Empty records, header last: protobuf fields come in any order.
        let mut bytes = [0x12, 0x00].repeat(5);
        bytes.extend_from_slice(&[0x0a, 0x00]);
        assert_eq!(
            scan_batch(&bytes),
            Ok(BatchShape {
                header: true,
                records: 5
            })
        );
        assert_eq!(Batch::decode(&bytes[..]).unwrap().records.len(), 5);
    }

    #[test]
    fn unknown_fields_are_skipped_like_prost_does() {
        // header, unknown varint 3, fixed64 4, fixed32 5, a group 6 holding a
        // nested group 7 with a varint, then a record.
        let bytes = [
            0x0a, 0x00, 0x18, 0x96, 0x01, 0x21, 1, 2, 3, 4, 5, 6, 7, 8, 0x2d, 1, 2, 3, 4, 0x33,
            0x3b, 0x08, 0x01, 0x3c, 0x34, 0x12, 0x00,
        ];
        assert!(Batch::decode(&bytes[..]).is_ok());
        assert_eq!(
            scan_batch(&bytes),
            Ok(BatchShape {
                header: true,
                records: 1
            })
        );
    }

    #[test]
    fn broken_framing_is_refused_where_prost_refuses_it() {
        let cases: &[(&[u8], WireError)] = &[
            (&[0x0a, 0xff, 0xff, 0x03, 0x01], WireError::Underflow),
            (&[0x0a], WireError::Varint),
            (&[0x12, 0x80], WireError::Varint),
            (&[0x00, 0x00], WireError::Key),
            (&[0x08, 0x01], WireError::FieldWireType("Batch.header")),
            (&[0x10, 0x01], WireError::FieldWireType("Batch.records")),
            (&[0x1e], WireError::WireType(6)),
            (&[0x1c], WireError::WireType(4)),
            (&[0x1b, 0x08, 0x01], WireError::Underflow),
            (&[0x1b, 0x24], WireError::WireType(4)),
            (&[0x21, 1, 2, 3], WireError::Underflow),
            (
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
                WireError::Varint,
            ),
        ];
        for (bytes, error) in cases {
            assert_eq!(scan_batch(bytes), Err(*error), "{bytes:02x?}");
            assert!(Batch::decode(*bytes).is_err(), "prost too: {bytes:02x?}");
        }
        let deep: Vec<u8> = [0x1b].repeat(101);
        assert_eq!(scan_batch(&deep), Err(WireError::Recursion));
    }

    #[test]
    fn lease_tokens_are_counted_before_decoding() {
        let request = |n: usize| {
            crate::proto::AckRequest {
                lease_tokens: vec![String::new(); n],
            }
            .encode_to_vec()
        };
        let code = |r: Result<(), ServiceError>| r.map_err(|e| e.code());
        assert_eq!(code(check_token_count(&request(3), 3)), Ok(()));
        assert_eq!(
            code(check_token_count(&request(4), 3)),
            Err("INVALID_REQUEST")
        );
        assert_eq!(
            code(check_token_count(&[0x08, 0x01], 3)),
            Err("MALFORMED_MESSAGE")
        );
    }

    #[test]
    fn the_shape_check_answers_in_prost_and_header_order() {
        let code = |r: Result<(), ServiceError>| r.map_err(|e| e.code());
        assert_eq!(code(check_batch_shape(&encoded(true, 3), 3)), Ok(()));
        assert_eq!(
            code(check_batch_shape(&encoded(true, 4), 3)),
            Err("TOO_MANY_RECORDS")
        );
        assert_eq!(
            code(check_batch_shape(&encoded(false, 4), 3)),
            Err("HEADER_MISSING")
        );
        let mut broken = encoded(false, 4);
        broken.push(0x0a);
        assert_eq!(
            code(check_batch_shape(&broken, 3)),
            Err("MALFORMED_MESSAGE")
        );
    }
}
