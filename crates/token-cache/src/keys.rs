//! Cache keys. Every key is a SHA-256 over the tokenizer's identity and the exact content it
//! stands for, never over ids or names alone: an edited document gets a new key, so stale tokens
//! cannot be returned, and IDs of one tokenizer are never served for another.

use sha2::{Digest, Sha256};

pub type Digest32 = [u8; 32];

pub fn content_hash(text: &str) -> Digest32 {
    Sha256::digest(text.as_bytes()).into()
}

/// One part of an assembled context: a document (by its content hash) or the separator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part<'a> {
    Document(&'a Digest32),
    Separator,
}

/// The key of a segment: the parts it is made of, in order, with the separator's text (when the
/// segment contains one) and the tokenizer's identity.
pub fn segment_key(tokenizer_id: &str, separator: &str, parts: &[Part<'_>]) -> Digest32 {
    let mut hasher = Sha256::new();
    hasher.update(b"tollgate-token-cache-segment-v1\0");
    hasher.update((tokenizer_id.len() as u64).to_le_bytes());
    hasher.update(tokenizer_id.as_bytes());
    // A segment without a separator (a single document) gets the same key whatever separator
    // the request uses, so it is shared between them.
    if parts.contains(&Part::Separator) {
        hasher.update((separator.len() as u64).to_le_bytes());
        hasher.update(separator.as_bytes());
    } else {
        hasher.update(u64::MAX.to_le_bytes());
    }
    for part in parts {
        match part {
            Part::Document(hash) => {
                hasher.update(b"D");
                hasher.update(hash);
            }
            Part::Separator => hasher.update(b"S"),
        }
    }
    hasher.finalize().into()
}
