//! Fast paths for the messages that carry long token-ID lists as field 1, `repeated uint32
//! token_ids` (packed): `GetContextResponse` and `TokenizeResponse`. A 2 x 10k-token context is
//! about 16-18k IDs; prost encodes and decodes a packed field a varint at a time through `BufMut`
//! and `Buf`, which took 64-70 µs to encode and 78-91 µs to decode 16-18k IDs here (release build),
//! more than the rest of an L1 hit through gRPC. Here the IDs are written and read with plain
//! slice loops (26 and 14 µs); every other field still goes through prost. The token-cache
//! benchmark prints both side by side ("GetContext answer").
//!
//! The bytes on the wire are exactly prost's: field 1 first (prost writes fields in tag order),
//! packed, and nothing for an empty list. Reading accepts everything prost accepts: the field
//! packed or not, split over several occurrences, varints up to ten bytes (truncated to 32 bits,
//! as prost does).

use std::any::{Any, TypeId};

use bytes::{Buf, Bytes};
use prost::Message;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint};

use crate::v1::{GetContextResponse, TokenizeResponse};

/// Field 1, length-delimited: the key byte of a packed `token_ids`.
const TOKEN_IDS_KEY: u8 = (1 << 3) | 2;

/// The token IDs of `message` if it is one of the messages this module handles.
pub(crate) fn token_ids_mut<M: 'static>(message: &mut M) -> Option<&mut Vec<u32>> {
    let message = message as &mut dyn Any;
    if message.is::<GetContextResponse>() {
        return message
            .downcast_mut::<GetContextResponse>()
            .map(|m| &mut m.token_ids);
    }
    message
        .downcast_mut::<TokenizeResponse>()
        .map(|m| &mut m.token_ids)
}

/// Encodes `message` (with its token IDs taken out into `ids`) as prost would encode it with them
/// in place: the packed IDs as field 1, then the other fields.
pub(crate) fn encode_with_ids<M: Message>(ids: &[u32], message: &M) -> Vec<u8> {
    let data_len = packed_len(ids);
    let field_len = if ids.is_empty() {
        0
    } else {
        1 + varint_len(data_len as u64) + data_len
    };
    let mut encoded = Vec::with_capacity(field_len + message.encoded_len());
    if !ids.is_empty() {
        encoded.push(TOKEN_IDS_KEY);
        push_varint(&mut encoded, data_len as u64);
        encode_packed(ids, data_len, &mut encoded);
    }
    message.encode_raw(&mut encoded);
    encoded
}

/// The bytes of `ids` as varints. Counted with compares that the compiler vectorises: prost's
/// formula through `leading_zeros` of a u64, applied per ID, took 12 µs for 7.3k IDs (as long as
/// writing them), this takes 1.5 µs.
fn packed_len(ids: &[u32]) -> usize {
    // Chunks whose count fits in a u32 (at most 5 bytes per ID), summed as usize.
    ids.chunks(1 << 28)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&id| {
                    1 + u32::from(id >= 1 << 7)
                        + u32::from(id >= 1 << 14)
                        + u32::from(id >= 1 << 21)
                        + u32::from(id >= 1 << 28)
                })
                .sum::<u32>() as usize
        })
        .sum()
}

/// Appends `ids` as varints, `data_len` bytes in all. An ID below 2^21 (every vocabulary we
/// serve) is built in a u32, its 7-bit groups spread to bytes and continuation bits set without a
/// branch, and stored with one 4-byte write; the next ID starts where its last byte ended. A
/// byte-at-a-time loop branches on each ID's length, which real token IDs make unpredictable: it
/// took 48 µs for 16k IDs, against 26 µs for this.
fn encode_packed(ids: &[u32], data_len: usize, out: &mut Vec<u8>) {
    let start = out.len();
    // 3 bytes of slack for the last ID's 4-byte store.
    out.resize(start + data_len + 3, 0);
    let data = &mut out[start..];
    let mut at = 0;
    for &id in ids {
        if id >= 1 << 21 {
            let mut value = id;
            while value >= 0x80 {
                data[at] = (value as u8) | 0x80;
                value >>= 7;
                at += 1;
            }
            data[at] = value as u8;
            at += 1;
            continue;
        }
        let two_or_more = u32::from(id >= 1 << 7);
        let three = u32::from(id >= 1 << 14);
        let spread = (id & 0x7f) | ((id & 0x3f80) << 1) | ((id & 0x1f_c000) << 2);
        let continuation = (two_or_more << 7) | (three << 15);
        data[at..at + 4].copy_from_slice(&(spread | continuation).to_le_bytes());
        at += (1 + two_or_more + three) as usize;
    }
    out.truncate(start + at);
}

/// Whether `M` is one of the messages this module handles.
pub(crate) fn handles<M: 'static>() -> bool {
    [
        TypeId::of::<GetContextResponse>(),
        TypeId::of::<TokenizeResponse>(),
    ]
    .contains(&TypeId::of::<M>())
}

/// Decodes `bytes` as `M`, one of the messages this module handles ([`handles`]).
pub(crate) fn decode<M: 'static>(bytes: Bytes) -> Result<M, String> {
    if !handles::<M>() {
        return Err(format!(
            "{} has no token_ids fast path",
            std::any::type_name::<M>()
        ));
    }
    let decoded: Box<dyn Any> = if TypeId::of::<M>() == TypeId::of::<GetContextResponse>() {
        Box::new(decode_with_ids::<GetContextResponse>(bytes, |m| {
            &mut m.token_ids
        })?)
    } else {
        Box::new(decode_with_ids::<TokenizeResponse>(bytes, |m| {
            &mut m.token_ids
        })?)
    };
    decoded
        .downcast::<M>()
        .map(|message| *message)
        .map_err(|_| format!("{} has no token_ids fast path", std::any::type_name::<M>()))
}

/// The loop of prost's `Message::merge`, with packed field 1 read by [`decode_packed`]. Other
/// fields go to `Message::merge_field`, which prost marks `doc(hidden)` (it is what its generated
/// code calls); prost is held to 0.14 in the workspace, whose generated code this crate compiles.
fn decode_with_ids<M: Message + Default>(
    mut bytes: Bytes,
    ids: fn(&mut M) -> &mut Vec<u32>,
) -> Result<M, String> {
    let mut message = M::default();
    while bytes.has_remaining() {
        let (tag, wire_type) = decode_key(&mut bytes).map_err(|e| e.to_string())?;
        if tag == 1 && wire_type == WireType::LengthDelimited {
            let len = decode_varint(&mut bytes).map_err(|e| e.to_string())?;
            let len = usize::try_from(len)
                .ok()
                .filter(|&len| len <= bytes.remaining())
                .ok_or("token_ids: length beyond the end of the message")?;
            decode_packed(&bytes[..len], ids(&mut message))?;
            bytes.advance(len);
        } else {
            message
                .merge_field(tag, wire_type, &mut bytes, DecodeContext::default())
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(message)
}

/// Appends the packed varints of `data` to `out` as u32 (higher bits dropped, as prost does).
/// IDs of one, two and three bytes (all below 2^21, which covers every vocabulary we serve) each
/// take one test of a byte; longer ones go through the general loop. (A branch-free read of a
/// 4-byte window was twice as slow: each ID's position then waits on the load before it.)
fn decode_packed(data: &[u8], out: &mut Vec<u32>) -> Result<(), String> {
    out.reserve(count_varints(data));
    let mut rest = data;
    while let [first, tail @ ..] = rest {
        if *first < 0x80 {
            out.push(u32::from(*first));
            rest = tail;
            continue;
        }
        match tail {
            [second, tail @ ..] if *second < 0x80 => {
                out.push(u32::from(first & 0x7f) | (u32::from(*second) << 7));
                rest = tail;
            }
            [second, third, tail @ ..] if *third < 0x80 => {
                out.push(
                    u32::from(first & 0x7f)
                        | (u32::from(second & 0x7f) << 7)
                        | (u32::from(*third) << 14),
                );
                rest = tail;
            }
            _ => {
                let (value, len) = decode_varint_slow(rest)?;
                out.push(value as u32);
                rest = &rest[len..];
            }
        }
    }
    Ok(())
}

/// How many varints `data` holds: every one ends with exactly one byte below 0x80. Counted 8
/// bytes at a time (a byte-at-a-time count took a third of the decoding time).
fn count_varints(data: &[u8]) -> usize {
    let mut words = data.chunks_exact(8);
    let mut count = 0;
    for word in &mut words {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        count += (!u64::from_le_bytes(bytes) & 0x8080_8080_8080_8080).count_ones() as usize;
    }
    count
        + words
            .remainder()
            .iter()
            .filter(|&&byte| byte < 0x80)
            .count()
}

/// One varint at the start of `data` and its length, a byte at a time (prost's overflow check).
fn decode_varint_slow(data: &[u8]) -> Result<(u64, usize), String> {
    let mut value = 0;
    for (index, &byte) in data.iter().enumerate().take(10) {
        // The tenth byte holds bit 63 only.
        if index == 9 && byte > 1 {
            return Err("token_ids: a varint longer than 64 bits".into());
        }
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte < 0x80 {
            return Ok((value, index + 1));
        }
    }
    if data.len() < 10 {
        Err("token_ids: a varint runs past the end of the field".into())
    } else {
        Err("token_ids: a varint longer than 64 bits".into())
    }
}

fn varint_len(value: u64) -> usize {
    // 1 + floor(log2(value) / 7), with 0 taking one byte: prost's formula.
    ((63 - (value | 1).leading_zeros()) * 9 + 73) as usize / 64
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::v1::{CacheOutcome, DocumentSpan};

    /// IDs of every varint length, mostly below 2^21 as real vocabularies are.
    fn any_id() -> impl Strategy<Value = u32> {
        prop_oneof![
            8 => 0u32..(1 << 21),
            1 => (1u32 << 21)..=u32::MAX,
            1 => prop::sample::select(vec![0, 127, 128, 16_383, 16_384, (1 << 21) - 1, 1 << 21, (1 << 28) - 1, 1 << 28, u32::MAX]),
        ]
    }

    proptest! {
        /// Byte for byte prost's encoding, and read back as prost reads it, for any IDs.
        #[test]
        fn any_ids_encode_as_prost_and_read_back(
            ids in prop::collection::vec(any_id(), 0..3000),
            tokenizer_id in "[a-z0-9_:]{0,40}",
            untruncated_tokens in any::<u64>(),
        ) {
            let message = GetContextResponse {
                token_ids: ids.clone(),
                untruncated_tokens,
                tokenizer_id,
                ..context(Vec::new())
            };
            let expected = message.encode_to_vec();
            let rest = GetContextResponse { token_ids: Vec::new(), ..message.clone() };
            prop_assert_eq!(&encode_with_ids(&ids, &rest), &expected);
            let decoded: Result<GetContextResponse, String> = decode(Bytes::from(expected));
            prop_assert_eq!(decoded, Ok(message));
        }

        /// Whatever the bytes, the fast path accepts exactly what prost accepts, with the same
        /// result. The bytes are runs that mostly start with a key of field 1 (packed or not) or
        /// of another field, so that both paths are taken and cut short in every way.
        #[test]
        fn any_bytes_read_as_prost_reads_them(runs in prop::collection::vec(
            (
                prop_oneof![Just(TOKEN_IDS_KEY), Just(0x08), Just(0x18), Just(0x2a), any::<u8>()],
                prop::collection::vec(any::<u8>(), 0..12),
            ),
            0..8,
        )) {
            let bytes: Vec<u8> = runs
                .into_iter()
                .flat_map(|(key, rest)| std::iter::once(key).chain(rest))
                .collect();
            let prost = GetContextResponse::decode(&bytes[..]).map_err(|_| ());
            let ours: Result<GetContextResponse, String> = decode(Bytes::from(bytes));
            prop_assert_eq!(ours.map_err(|_| ()), prost);
        }
    }

    fn context(ids: Vec<u32>) -> GetContextResponse {
        GetContextResponse {
            token_ids: ids,
            spans: vec![DocumentSpan {
                id: "d0".into(),
                start: 0,
                end: 3,
                l1: CacheOutcome::Hit as i32,
                l2: CacheOutcome::Skipped as i32,
                truncated: false,
            }],
            untruncated_tokens: 3,
            truncated: false,
            tokenizer_id: "cl100k_base:0123".into(),
        }
    }

    /// IDs at every varint length boundary, up to u32::MAX.
    fn boundary_ids() -> Vec<u32> {
        let mut ids = vec![0, 1];
        for bits in [7, 14, 21, 28] {
            ids.extend([(1u32 << bits) - 1, 1 << bits, (1 << bits) + 1]);
        }
        ids.push(u32::MAX);
        ids.extend((0..5000u32).map(|i| i.wrapping_mul(2_654_435_761) % 200_000));
        ids
    }

    #[test]
    fn encodes_byte_for_byte_as_prost() {
        for ids in [Vec::new(), vec![0], boundary_ids()] {
            let mut message = context(ids);
            let expected = message.encode_to_vec();
            let ids = std::mem::take(&mut message.token_ids);
            assert_eq!(encode_with_ids(&ids, &message), expected);
        }
        let tokenize = TokenizeResponse {
            token_ids: boundary_ids(),
            tokenizer_id: "o200k_base:89ab".into(),
        };
        let expected = tokenize.encode_to_vec();
        let rest = TokenizeResponse {
            token_ids: Vec::new(),
            ..tokenize.clone()
        };
        assert_eq!(encode_with_ids(&tokenize.token_ids, &rest), expected);
    }

    #[test]
    fn decodes_what_prost_decodes() {
        let message = context(boundary_ids());
        let decoded: Result<GetContextResponse, String> =
            decode(Bytes::from(message.encode_to_vec()));
        assert_eq!(decoded, Ok(message));
    }

    #[test]
    fn other_messages_are_left_to_prost() {
        let count = crate::v1::CountTokensResponse {
            count: 1,
            tokenizer_id: String::new(),
        };
        assert!(!handles::<crate::v1::CountTokensResponse>());
        assert!(handles::<GetContextResponse>() && handles::<TokenizeResponse>());
        assert!(token_ids_mut(&mut count.clone()).is_none());
    }

    /// Unpacked occurrences, several packed runs and over-long varints (a uint32 written as a
    /// 64-bit value by another encoder) read as prost reads them.
    #[test]
    fn reads_every_encoding_prost_accepts() {
        let mut bytes = Vec::new();
        // Unpacked: field 1, varint.
        bytes.extend([0x08, 0x05]);
        // Packed run: 300, then u64::MAX (ten bytes, truncated to u32::MAX).
        let mut data = Vec::new();
        push_varint(&mut data, 300);
        push_varint(&mut data, u64::MAX);
        bytes.push(TOKEN_IDS_KEY);
        push_varint(&mut bytes, data.len() as u64);
        bytes.extend(&data);
        // Field 5 (tokenizer_id) between runs, then another packed run.
        bytes.extend([0x2a, 0x01, b'x']);
        bytes.extend([TOKEN_IDS_KEY, 0x01, 0x07]);
        let prost = GetContextResponse::decode(&bytes[..]);
        let ours: Result<GetContextResponse, String> = decode(Bytes::from(bytes));
        let prost = prost.map_err(|e| e.to_string());
        assert_eq!(
            prost.as_ref().map(|m| m.token_ids.clone()),
            Ok(vec![5, 300, u32::MAX, 7])
        );
        assert_eq!(ours, prost);
    }

    #[test]
    fn rejects_what_prost_rejects() {
        // Eleven bytes of varint; then ten whose tenth byte is above 1.
        let eleven = [&[TOKEN_IDS_KEY, 0x0b][..], &[0xff; 10], &[0x01]].concat();
        let tenth_too_big = [&[TOKEN_IDS_KEY, 0x0a][..], &[0xff; 9], &[0x02]].concat();
        let cases: [&[u8]; 4] = [
            // Length beyond the message.
            &[TOKEN_IDS_KEY, 0x05, 0x01, 0x02],
            // A varint cut off by the end of the field.
            &[TOKEN_IDS_KEY, 0x01, 0x80],
            &eleven,
            &tenth_too_big,
        ];
        for bytes in cases {
            assert!(GetContextResponse::decode(bytes).is_err(), "{bytes:?}");
            let ours: Result<GetContextResponse, String> = decode(Bytes::copy_from_slice(bytes));
            assert!(ours.is_err(), "{bytes:?}: {ours:?}");
        }
    }
}
