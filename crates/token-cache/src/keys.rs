//! Cache keys. Every cached segment has two keys, both over the tokenizer's identity and the exact
//! content of the segment (its documents' text, the separator), never over ids or names alone:
//!
//! - its content key, a SHA-256: the identity of a Redis value. Every value carries it (see
//!   `codec`) and is used only when it equals the content key of what the request asks for. An
//!   edited document gets a new content key, so stale tokens cannot be returned, and IDs of one
//!   tokenizer are never served for another. (An L1 value is checked against the text itself, see
//!   `segments::SegmentSource`: exact, and faster than hashing the request.)
//! - its lookup key, an XXH3-128: where the value is looked up, in L1 and in Redis. It costs
//!   about 1 µs per 20 KB where SHA-256 costs 10, so the Redis read for what L1 lacks starts
//!   before the documents' SHA-256 is computed, and the two overlap. Two contents with one lookup
//!   key (which nothing but a crafted collision produces) never get each other's tokens: the
//!   text or the content key decides, the first content keeps the lookup key and the later one
//!   goes uncached.

use sha2::{Digest, Sha256};

pub type Digest32 = [u8; 32];
pub type LookupKey = [u8; 16];

/// The SHA-256 of a document's text.
pub fn content_hash(text: &str) -> Digest32 {
    Sha256::digest(text.as_bytes()).into()
}

/// The XXH3-128 of a document's text.
pub fn lookup_hash(text: &str) -> LookupKey {
    xxhash_rust::xxh3::xxh3_128(text.as_bytes()).to_le_bytes()
}

/// One part of an assembled context: a document (by its content hash, [`Digest32`], or its lookup
/// hash, [`LookupKey`]) or the separator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part<'a, H> {
    Document(&'a H),
    Separator,
}

/// The content key of a segment made of `parts`.
pub fn segment_key(tokenizer_id: &str, separator: &str, parts: &[Part<'_, Digest32>]) -> Digest32 {
    Sha256::digest(segment_description(tokenizer_id, separator, parts)).into()
}

/// The lookup key of a segment made of `parts`.
pub fn segment_lookup_key(
    tokenizer_id: &str,
    separator: &str,
    parts: &[Part<'_, LookupKey>],
) -> LookupKey {
    xxhash_rust::xxh3::xxh3_128(&segment_description(tokenizer_id, separator, parts)).to_le_bytes()
}

/// What a segment's keys are computed over: the parts it is made of, in order, with the
/// separator's text (when the segment contains one) and the tokenizer's identity.
fn segment_description<const N: usize>(
    tokenizer_id: &str,
    separator: &str,
    parts: &[Part<'_, [u8; N]>],
) -> Vec<u8> {
    let mut description = Vec::with_capacity(64 + tokenizer_id.len() + 33 * parts.len());
    description.extend_from_slice(b"tollgate-token-cache-segment-v1\0");
    description.extend_from_slice(&(tokenizer_id.len() as u64).to_le_bytes());
    description.extend_from_slice(tokenizer_id.as_bytes());
    // A segment without a separator (a single document) gets the same key whatever separator
    // the request uses, so it is shared between them.
    if parts.contains(&Part::Separator) {
        description.extend_from_slice(&(separator.len() as u64).to_le_bytes());
        description.extend_from_slice(separator.as_bytes());
    } else {
        description.extend_from_slice(&u64::MAX.to_le_bytes());
    }
    for part in parts {
        match part {
            Part::Document(hash) => {
                description.push(b'D');
                description.extend_from_slice(&hash[..]);
            }
            Part::Separator => description.push(b'S'),
        }
    }
    description
}
