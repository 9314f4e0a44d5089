//! The compact binary form of a cached segment in Redis.
//!
//! ```text
//! "TC" | version (1 byte) | CRC-32C (4 bytes, little endian) | content key (32 bytes) | body
//! body = varint(token count n) | varint(document count) | varint(doc start)*
//!      | low 16 bits of each id (n x u16, little endian)
//!      | high flags (ceil(n / 8) bytes: bit i % 8 of byte i / 8 is set when id i >= 65536)
//!      | varint(id >> 16) for each flagged id, in order
//! ```
//! Varints are unsigned LEB128. Most IDs of every tiktoken vocabulary are below 65536 (measured on
//! this repository's prose and code: all of p50k's, 97-98% of cl100k's, 91-93% of o200k's), so a
//! token takes 2 bytes and 1 bit, plus a byte for the few above: 2.12-2.22 bytes per token, against
//! 4 for raw u32 and 5-10 for JSON arrays (BENCHMARKS.md). Version 1 wrote every ID as a varint
//! (about 2.0 bytes per token) but took about 2 ns per ID to decode, a branch per byte on lengths that
//! vary from ID to ID; here the low halves are one vectorised pass and the rare high parts are
//! patched in after. Checking and decoding 18k IDs took 43-51 µs with version 1 and its
//! table CRC, about 11 µs now (the "L2 hit anatomy" line of the token-cache benchmark).
//! The encoding is canonical: a flag on an ID below 65536, stray flag bits after the last ID and
//! non-minimal varints are all rejected.
//!
//! The value carries the segment's content key (the SHA-256 of `crate::keys`) in full, and
//! decoding compares it with the content key the caller expects: a value of other content under
//! the same lookup key (the Redis key is an XXH3-128, see `crate::keys`) is `OtherContent`, never
//! returned. Version 2 had the key in its checksum only, enough while the Redis key was the
//! SHA-256 itself, but 32 bits is no defence once the Redis key is not. The checksum covers the
//! stored key and the body, so a value that is truncated, flipped or written by another format is
//! detected; the caller treats it as a miss and overwrites it. The version is also part of the
//! Redis key (`RedisStore`), so during a rollout old and new replicas keep their values apart
//! instead of overwriting each other's.

use crate::keys::Digest32;

const MAGIC: [u8; 2] = *b"TC";
pub const FORMAT_VERSION: u8 = 3;
/// Magic, version, checksum, content key.
pub const HEADER_LEN: usize = 2 + 1 + 4 + 32;
/// Where the checksummed part (content key and body) starts.
const KEY_AT: usize = 7;
/// A u32 takes at most 5 LEB128 bytes.
const MAX_VARINT_U32_BYTES: usize = 5;

/// The token IDs of one segment and, for each document in it, the index of its first token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SegmentTokens {
    pub ids: Vec<u32>,
    pub doc_starts: Vec<u32>,
}

/// Why a stored value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("value too short")]
    TooShort,
    #[error("not a token-cache value")]
    BadMagic,
    #[error("unsupported format version {0}")]
    Version(u8),
    #[error("checksum mismatch")]
    Checksum,
    /// Intact, but the tokens of other content (another content key).
    #[error("the value of other content")]
    OtherContent,
    #[error("malformed body")]
    Malformed,
}

pub fn encode(key: &Digest32, tokens: &SegmentTokens) -> Vec<u8> {
    let count = tokens.ids.len();
    let high_ids = tokens.ids.iter().filter(|id| **id > 0xffff).count();
    let mut out =
        Vec::with_capacity(HEADER_LEN + 20 + 2 * count + count.div_ceil(8) + 3 * high_ids);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(key);
    put_varint(&mut out, count as u32);
    put_varint(&mut out, tokens.doc_starts.len() as u32);
    for start in &tokens.doc_starts {
        put_varint(&mut out, *start);
    }
    for id in &tokens.ids {
        out.extend_from_slice(&(*id as u16).to_le_bytes());
    }
    for group in tokens.ids.chunks(8) {
        let flags = group.iter().enumerate().fold(0u8, |flags, (bit, id)| {
            flags | (u8::from(*id > 0xffff) << bit)
        });
        out.push(flags);
    }
    for id in tokens.ids.iter().filter(|id| **id > 0xffff) {
        put_varint(&mut out, id >> 16);
    }
    let checksum = crc32c::crc32c(&out[KEY_AT..]);
    out[3..KEY_AT].copy_from_slice(&checksum.to_le_bytes());
    out
}

/// The tokens of `value` if it is intact and holds the segment whose content key is `key`.
pub fn decode(key: &Digest32, value: &[u8]) -> Result<SegmentTokens, DecodeError> {
    if value.len() < HEADER_LEN {
        return Err(DecodeError::TooShort);
    }
    if value[..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if value[2] != FORMAT_VERSION {
        return Err(DecodeError::Version(value[2]));
    }
    let stored = u32::from_le_bytes([value[3], value[4], value[5], value[6]]);
    if crc32c::crc32c(&value[KEY_AT..]) != stored {
        return Err(DecodeError::Checksum);
    }
    if value[KEY_AT..HEADER_LEN] != key[..] {
        return Err(DecodeError::OtherContent);
    }
    let body = &value[HEADER_LEN..];
    let mut reader = Reader {
        bytes: body,
        pos: 0,
    };
    let token_count = reader.varint_usize()?;
    let doc_count = reader.varint_usize()?;
    // Each varint takes at least one byte: bound the allocations by what the body can hold.
    if token_count.saturating_add(doc_count) > body.len() {
        return Err(DecodeError::Malformed);
    }
    let mut doc_starts = Vec::with_capacity(doc_count);
    for _ in 0..doc_count {
        doc_starts.push(reader.varint_u32()?);
    }
    let ids = reader.ids(token_count)?;
    if reader.pos != body.len() {
        return Err(DecodeError::Malformed);
    }
    Ok(SegmentTokens { ids, doc_starts })
}

fn put_varint(out: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// One minimal varint of at most 5 bytes whose value fits a u32.
    fn varint_u32(&mut self) -> Result<u32, DecodeError> {
        let mut value = 0u64;
        for index in 0..MAX_VARINT_U32_BYTES {
            let byte = *self.bytes.get(self.pos).ok_or(DecodeError::Malformed)?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                // A zero last byte after the first adds nothing: not the minimal form.
                if byte == 0 && index > 0 {
                    return Err(DecodeError::Malformed);
                }
                return u32::try_from(value).map_err(|_| DecodeError::Malformed);
            }
        }
        Err(DecodeError::Malformed)
    }

    fn varint_usize(&mut self) -> Result<usize, DecodeError> {
        Ok(self.varint_u32()? as usize)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(len).ok_or(DecodeError::Malformed)?;
        let taken = self
            .bytes
            .get(self.pos..end)
            .ok_or(DecodeError::Malformed)?;
        self.pos = end;
        Ok(taken)
    }

    /// `count` token IDs: their low halves, flags and high parts (the format above).
    fn ids(&mut self, count: usize) -> Result<Vec<u32>, DecodeError> {
        let low = self.take(count.checked_mul(2).ok_or(DecodeError::Malformed)?)?;
        let flags = self.take(count.div_ceil(8))?;
        let mut high = Reader {
            bytes: self.bytes,
            pos: self.pos,
        };
        // All low halves in one pass (it vectorises), then the few high parts patched in.
        let mut ids: Vec<u32> = low
            .chunks_exact(2)
            .map(|pair| u32::from(u16::from_le_bytes([pair[0], pair[1]])))
            .collect();
        for (group, group_flags) in flags.iter().enumerate() {
            if *group_flags == 0 {
                continue;
            }
            let mut pending = *group_flags;
            while pending != 0 {
                let index = group * 8 + pending.trailing_zeros() as usize;
                pending &= pending - 1;
                // A flag past the last ID (in the last group) has no ID to patch.
                let id = ids.get_mut(index).ok_or(DecodeError::Malformed)?;
                let high_half = high.varint_u32()?;
                if high_half == 0 || high_half > 0xffff {
                    return Err(DecodeError::Malformed);
                }
                *id |= high_half << 16;
            }
        }
        self.pos = high.pos;
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(ids in proptest::collection::vec(any::<u32>(), 0..300),
                       doc_starts in proptest::collection::vec(0u32..1000, 0..5),
                       key in any::<[u8; 32]>()) {
            let tokens = SegmentTokens { ids, doc_starts };
            let encoded = encode(&key, &tokens);
            prop_assert_eq!(decode(&key, &encoded), Ok(tokens));
        }

        /// Vocabulary-sized IDs (1 to 3 bytes), mixed with any u32.
        #[test]
        fn round_trips_token_sized_ids(ids in proptest::collection::vec(
                                           prop_oneof![0u32..128, 128u32..16_384, 16_384u32..300_000, any::<u32>()],
                                           0..400)) {
            let tokens = SegmentTokens { ids, doc_starts: vec![0] };
            let encoded = encode(&[3u8; 32], &tokens);
            prop_assert_eq!(decode(&[3u8; 32], &encoded), Ok(tokens));
        }

        #[test]
        fn any_single_corruption_is_detected(ids in proptest::collection::vec(0u32..200_000, 1..200),
                                             position in any::<prop::sample::Index>(),
                                             flip in 1u8..=255) {
            let key = [7u8; 32];
            let tokens = SegmentTokens { ids, doc_starts: vec![0] };
            let mut encoded = encode(&key, &tokens);
            let at = position.index(encoded.len());
            encoded[at] ^= flip;
            prop_assert!(decode(&key, &encoded).is_err());
        }
    }

    #[test]
    fn non_canonical_encodings_are_rejected() {
        let key = [5u8; 32];
        // One ID (70_000 = 0x1_1170): low half, flag byte, high part 1.
        let value = |tail: &[u8]| {
            let mut body = vec![1, 1, 0, 0x70, 0x11];
            body.extend_from_slice(tail);
            let mut checked = key.to_vec();
            checked.extend_from_slice(&body);
            let mut value = MAGIC.to_vec();
            value.push(FORMAT_VERSION);
            value.extend_from_slice(&crc32c::crc32c(&checked).to_le_bytes());
            value.extend_from_slice(&checked);
            value
        };
        assert_eq!(
            decode(&key, &value(&[0b1, 1])).unwrap().ids,
            vec![70_000],
            "the canonical form"
        );
        for (tail, why) in [
            (&[0b1, 0][..], "a flag on an ID below 65536"),
            (&[0b11, 1], "a flag past the last ID"),
            (&[0b1, 0x81, 0], "a varint with a zero last byte"),
            (&[0b1], "a missing high part"),
            (&[0b1, 1, 0], "a byte after the body"),
        ] {
            assert_eq!(
                decode(&key, &value(tail)),
                Err(DecodeError::Malformed),
                "{why}"
            );
        }
    }

    #[test]
    fn the_checksum_is_standard_crc32c() {
        // The catalogue's check value: stored values stay readable whichever table computes it.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn truncation_wrong_key_and_garbage_are_rejected() {
        let key = [1u8; 32];
        let tokens = SegmentTokens {
            ids: vec![1, 300, 70_000, 100_255],
            doc_starts: vec![0, 2],
        };
        let encoded = encode(&key, &tokens);
        assert!(decode(&key, &encoded[..encoded.len() - 1]).is_err());
        assert_eq!(decode(&[2u8; 32], &encoded), Err(DecodeError::OtherContent));
        let json = b"[15339, 1917, 15339, 1917, 15339, 1917, 15339, 1917]";
        assert_eq!(decode(&key, json), Err(DecodeError::BadMagic));
        assert_eq!(decode(&key, b"TC"), Err(DecodeError::TooShort));
        let mut future = encoded.clone();
        future[2] = 9;
        assert_eq!(decode(&key, &future), Err(DecodeError::Version(9)));
    }
}
