//! The protobuf codec of every generated service and client: prost encoding,
//! but a message that does not decode is the caller's fault, so it becomes
//! INVALID_ARGUMENT with the stable code `MALFORMED_MESSAGE` (tonic's own codec
//! answers INTERNAL, which tells a vendor to wait for us instead of fixing
//! their encoder). The status message names the field path prost reports,
//! never a value.
//!
//! Wired in by `build.rs` (`codec_path`); nothing else calls it.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::error::ServiceError;

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

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(src)
            .map(Some)
            .map_err(|e| ServiceError::Malformed(e.to_string()).into())
    }
}
