//! [`ProtoCodec`]: the protobuf codec of every generated tollgate client and server (set with
//! `codec_path` in build.rs). The wire format is exactly tonic-prost's `ProstCodec`; only the
//! buffers differ, because they decide the cost of large messages:
//!
//! - Encoding: prost writes varints a byte at a time through the `BufMut` it is given. Into
//!   tonic's `EncodeBuf` each byte is a call to `BytesMut::put_slice` (not inlined), so a
//!   GetContext answer of 8,000 token IDs took about 0.3 ms to encode (measured with `perf` on the
//!   token-cache benchmark). Into a `Vec` of the exact size the same loop is a plain store, and
//!   the message is then copied into tonic's buffer in one piece.
//! - Decoding: prost reads from a `Bytes` split off tonic's buffer (no copy); advancing a
//!   `Bytes` is a pointer bump, where advancing tonic's `DecodeBuf` goes through `BytesMut`'s
//!   shared-buffer bookkeeping on every varint.
//! - Token IDs: the packed `token_ids` of GetContext and Tokenize answers are written and read by
//!   plain slice loops instead of prost's varint-at-a-time calls (`token_ids.rs`).

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::token_ids;

/// Messages up to this size are encoded straight into tonic's buffer: for them the copy through
/// a `Vec` would cost more than it saves.
const DIRECT_ENCODE_MAX_BYTES: usize = 256;

/// A [`Codec`] for `application/grpc+proto` with prost messages (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct ProtoCodec<T, U> {
    _messages: PhantomData<(T, U)>,
}

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        Self {
            _messages: PhantomData,
        }
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProtoEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProtoEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(PhantomData)
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ProtoEncoder<T>(PhantomData<T>);

impl<T: Message + 'static> Encoder for ProtoEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // Token-ID answers first: `encoded_len` would walk all their IDs once more.
        if token_ids::handles::<T>() {
            buf.put_slice(&encode_message(item));
            return Ok(());
        }
        let len = item.encoded_len();
        if len <= DIRECT_ENCODE_MAX_BYTES {
            buf.reserve(len);
            item.encode_raw(buf);
        } else {
            buf.put_slice(&encode_message(item));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ProtoDecoder<U>(PhantomData<U>);

impl<U: Message + Default + 'static> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode_message(buf.copy_to_bytes(buf.remaining())).map(Some)
    }
}

/// The bytes [`ProtoCodec`] sends for `message` (the gRPC frame's payload): prost's encoding,
/// with token IDs written by `token_ids.rs`.
pub fn encode_message<T: Message + 'static>(mut message: T) -> Vec<u8> {
    match token_ids::token_ids_mut(&mut message) {
        Some(ids) => {
            let ids = std::mem::take(ids);
            token_ids::encode_with_ids(&ids, &message)
        }
        None => message.encode_to_vec(),
    }
}

/// A message as [`ProtoCodec`] reads it from a gRPC frame's payload. As tonic-prost, a message
/// that does not parse is INTERNAL (the gRPC status codes document).
pub fn decode_message<U: Message + Default + 'static>(message: Bytes) -> Result<U, Status> {
    if token_ids::handles::<U>() {
        return token_ids::decode(message).map_err(Status::internal);
    }
    U::decode(message).map_err(|error| Status::internal(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1 as pb;
    use tonic::codec::{EncodeBody, Streaming};
    use tonic_prost::{ProstDecoder, ProstEncoder};

    /// `message` framed by `encoder` and read back by `decoder`, through tonic's own framing.
    async fn through<M, E, D>(message: &M, encoder: E, decoder: D) -> M
    where
        M: Message + Default + Clone + Send + 'static,
        E: Encoder<Item = M, Error = Status> + Send + 'static,
        D: Decoder<Item = M, Error = Status> + Send + 'static,
    {
        let source = tokio_stream::iter([Ok::<_, Status>(message.clone())]);
        let body = EncodeBody::new_client(encoder, source, None, None);
        let mut stream = Streaming::new_request(decoder, body, None, None);
        stream
            .message()
            .await
            .unwrap_or_else(|status| panic!("decoding failed: {status}"))
            .unwrap_or_else(|| panic!("no message"))
    }

    /// Interchangeable with tonic-prost in both directions, for a message below and one far above
    /// the direct-encoding threshold: the wire format is unchanged.
    #[tokio::test]
    async fn reads_and_writes_what_tonic_prost_does() {
        let small = pb::CountTokensResponse {
            count: 3,
            tokenizer_id: "cl100k_base".into(),
        };
        let large = pb::GetContextResponse {
            token_ids: (0..20_000u32).map(|i| i * 7919 % 200_000).collect(),
            untruncated_tokens: 20_000,
            tokenizer_id: "cl100k_base:0123".into(),
            ..Default::default()
        };
        assert!(small.encoded_len() <= DIRECT_ENCODE_MAX_BYTES);
        assert!(large.encoded_len() > DIRECT_ENCODE_MAX_BYTES);
        assert_interchangeable(&small).await;
        assert_interchangeable(&large).await;
    }

    async fn assert_interchangeable<M>(message: &M)
    where
        M: Message + Default + Clone + PartialEq + std::fmt::Debug + Send + 'static,
    {
        let ours_to_prost = through(message, ProtoEncoder(PhantomData), ProstDecoder::default());
        assert_eq!(&ours_to_prost.await, message);
        let prost_to_ours = through(message, ProstEncoder::default(), ProtoDecoder(PhantomData));
        assert_eq!(&prost_to_ours.await, message);
    }

    #[tokio::test]
    async fn a_message_that_does_not_parse_is_internal() {
        // Field 1 of GetContextResponse announced as 5 packed bytes, with only 2 present.
        let garbage = bytes::Bytes::from_static(&[0x0a, 0x05, 0x01, 0x02]);
        let source = tokio_stream::iter([Ok::<_, Status>(garbage)]);
        let body = EncodeBody::new_client(RawBytes, source, None, None);
        let mut stream: Streaming<pb::GetContextResponse> =
            Streaming::new_request(ProtoDecoder(PhantomData), body, None, None);
        let status = stream.message().await.err();
        assert_eq!(status.map(|s| s.code()), Some(tonic::Code::Internal));
    }

    /// Frames bytes as they are, to send a malformed message.
    struct RawBytes;

    impl Encoder for RawBytes {
        type Item = bytes::Bytes;
        type Error = Status;

        fn encode(&mut self, item: bytes::Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
            buf.put_slice(&item);
            Ok(())
        }
    }
}
